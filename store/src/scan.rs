//! Scanning a folder against the index: what changed on disk becomes signed log entries.
//!
//! A scan runs in two phases.
//!
//! 1. **Walk** (stat only, while the index loads on a second thread): every path under
//!    the root, minus `.weftignore` matches and weft's own defaults. A file whose size, mtime, inode and executable bit match its
//!    index row is skipped without being read. Paths in the index but not on disk are
//!    deleted, unless they lie under a directory that could not be read. A new file with
//!    the inode, size and mtime of a deleted one is a **move**: it re-uses the old
//!    manifest and is never read.
//! 2. **Read** what is new or changed through a pipeline that keeps both cores busy
//!    with bounded memory: two cutter threads take the files in turn, read each in
//!    blocks and cut chunks (FastCDC), a pool of workers keys, seals and names each
//!    chunk, and the calling thread — the only one touching the database — appends new
//!    chunks to the cache and writes entries, in batches of one redb transaction each. A new file whose content
//!    equals a deleted file's is also recorded as a move. Chunk buffers are handed
//!    back and reused rather than allocated per chunk: fresh memory costs a page fault
//!    per 4 KiB, which was a fifth of a large-file scan.
//!
//! A file that changes while it is read (size, mtime or inode differ before and after,
//! or the byte count is off) is read again, up to [`MAX_ATTEMPTS`] times, then skipped
//! with a warning. A file written in the last seconds is also hashed as it is cut and
//! read a second time: a rewrite in place within one timestamp tick leaves every stat
//! equal while the bytes read mix two writes, and only the content can show it; the two
//! reads must agree. A hash that does not match what was stored is never recorded.
//! Every batch is one transaction, and pack data is synced before the transaction that
//! references it commits, so a crash at any point leaves a consistent store; the next
//! scan picks up what the interrupted one did not record.
use crate::db::{self, FolderRecord, IndexKind, IndexRow, VersionRecord};
use crate::error::{Result, StoreError};
use crate::log::{Op, WireManifest};
use crate::model::{ChunkRef, Manifest, RelPath, VersionId};
use crate::store::{Store, append_local, now_ms};
use crossbeam_channel::{Receiver, Sender, bounded};
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;
use weft_crypto::{FolderKeys, Hash, SealedChunk};

/// Reads of a file that keeps changing before it is skipped.
pub const MAX_ATTEMPTS: u32 = 3;
/// The hidden directory in each folder root for weft's temporary files.
pub const TEMP_DIR: &str = ".weft";
/// Patterns always ignored: weft's own temp dir, editors' swap and lock files.
/// `.weft/` at any depth: the root's is this folder's own state, and one further down is
/// the state of a weft folder copied in (its partial files, its marker), never content.
pub const DEFAULT_IGNORES: &[&str] = &[".weft/", "*.swp", "~$*", ".#*"];
/// The ignore file read from the folder root.
pub const IGNORE_FILE: &str = ".weftignore";
/// The marker in every folder root (`.weft/folder`, holding the folder id): a root
/// without it (an unmounted disk's empty mount point) is never scanned.
pub const MARKER: &str = "folder";

/// Writes a folder's marker.
pub fn write_marker(root: &Path, id: &weft_crypto::FolderId) -> Result<()> {
    let dir = root.join(TEMP_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
    let p = dir.join(MARKER);
    std::fs::write(&p, id.to_string()).map_err(|e| StoreError::io(&p, e))
}

/// Checks that `root` is there, a directory, and carries the folder's marker.
pub fn check_root(root: &Path, id: &weft_crypto::FolderId) -> Result<()> {
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => {}
        _ => return Err(StoreError::RootMissing(root.to_path_buf())),
    }
    match std::fs::read_to_string(root.join(TEMP_DIR).join(MARKER)) {
        Ok(s) if s.trim() == id.to_string() => Ok(()),
        _ => Err(StoreError::MarkerMissing(root.to_path_buf())),
    }
}

const BATCH_OPS: usize = 2000;
const BATCH_BYTES: u64 = 128 << 20;
/// A batch is committed once it is this old, so what a long scan found reaches other
/// devices while it goes on (a node tells its peers at each commit: see
/// [`Progress::committed`]) and a killed scan loses at most this much of its work.
const BATCH_TIME: std::time::Duration = std::time::Duration::from_millis(250);

/// What a scan did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ScanSummary {
    /// The folder's name.
    pub folder: String,
    /// New files recorded.
    pub files_added: u64,
    /// Modified files recorded.
    pub files_changed: u64,
    /// Deleted files recorded.
    pub files_deleted: u64,
    /// Moved files recorded.
    pub files_moved: u64,
    /// New directories recorded.
    pub dirs_added: u64,
    /// Deleted directories recorded.
    pub dirs_deleted: u64,
    /// Bytes read from files.
    pub bytes_read: u64,
    /// Chunks this device had not seen before (in no cached or current version).
    pub new_chunks: u64,
    /// Their ciphertext bytes.
    pub new_chunk_bytes: u64,
    /// Ciphertext bytes added to the chunk cache (within its budget).
    pub cached_bytes: u64,
    /// Log entries written.
    pub log_entries: u64,
    /// Their encoded bytes.
    pub log_bytes: u64,
    /// Wall-clock time.
    pub elapsed_ms: u64,
    /// Paths skipped, and why.
    pub warnings: Vec<String>,
}

/// Receives a scan's progress (for a progress bar).
pub trait Progress: Sync {
    /// The read phase starts: this many files and bytes to read.
    fn start(&self, _files: u64, _bytes: u64) {}
    /// More bytes were read.
    fn advance(&self, _bytes: u64) {}
    /// Something was skipped.
    fn warn(&self, _msg: &str) {}
    /// Log entries were committed (at each commit that holds some, while the scan goes
    /// on and at its end): other devices may fetch them now.
    fn committed(&self) {}
    /// The scan is over.
    fn finish(&self) {}
}

/// Progress that goes nowhere.
pub struct NoProgress;
impl Progress for NoProgress {}

/// What a scan compares a file by (without reading it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stat {
    size: u64,
    mtime_ns: i64,
    inode: u64,
    dev: u64,
    executable: bool,
}

impl Stat {
    pub(crate) fn of(m: &std::fs::Metadata) -> Stat {
        Stat {
            size: m.len(),
            mtime_ns: m
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(m.mtime_nsec()),
            inode: m.ino(),
            dev: m.dev(),
            executable: m.mode() & 0o100 != 0,
        }
    }

    pub(crate) fn matches(&self, row: &IndexRow) -> bool {
        row.kind == IndexKind::File
            && row.size == self.size
            && row.mtime_ns == self.mtime_ns
            && row.inode == self.inode
            && row.dev == self.dev
    }

    pub(crate) fn row(&self, hash: Hash, version: VersionId) -> IndexRow {
        IndexRow {
            kind: IndexKind::File,
            size: self.size,
            mtime_ns: self.mtime_ns,
            inode: self.inode,
            dev: self.dev,
            executable: self.executable,
            hash,
            version,
        }
    }
}

/// Builds the ignore matcher of a folder root: defaults plus `.weftignore`.
pub fn ignore_matcher(root: &Path) -> Result<(Gitignore, Vec<String>)> {
    let mut b = GitignoreBuilder::new(root);
    let mut warnings = Vec::new();
    for line in DEFAULT_IGNORES {
        b.add_line(None, line)
            .map_err(|e| StoreError::decode("default ignore pattern", e))?;
    }
    let f = root.join(IGNORE_FILE);
    if f.exists()
        && let Some(e) = b.add(&f)
    {
        warnings.push(format!("{}: {e}", f.display()));
    }
    let gi = b
        .build()
        .map_err(|e| StoreError::decode("ignore patterns", e))?;
    Ok((gi, warnings))
}

fn is_ignored(gi: &Gitignore, path: &Path, is_dir: bool) -> bool {
    gi.matched_path_or_any_parents(path, is_dir).is_ignore()
}

/// The walk's view of the folder.
struct Walk {
    dirs: Vec<RelPath>,
    /// Files that need reading: (path, stat, known in index).
    to_read: Vec<(RelPath, Stat)>,
    /// Files whose only change is the executable bit.
    mode_only: Vec<(RelPath, Stat)>,
    /// Files seen, unchanged or not, by path.
    seen_files: HashSet<RelPath>,
    /// Directories that could not be read: nothing under them is deleted.
    unreadable: Vec<RelPath>,
    warnings: Vec<String>,
}

/// What the disk holds, before it is compared with the index: the walk runs while
/// the index is loaded on another thread (each took about half of a rescan).
struct OnDisk {
    dirs: Vec<RelPath>,
    files: Vec<(RelPath, Stat)>,
    /// Files listed but gone before their stat: seen (not deleted), not read.
    vanished: Vec<RelPath>,
    unreadable: Vec<RelPath>,
    warnings: Vec<String>,
}

impl OnDisk {
    /// Sorts the files into unchanged, executable bit only, and to be read.
    fn compare(self, index: &BTreeMap<RelPath, IndexRow>) -> Walk {
        let mut w = Walk {
            dirs: self.dirs,
            to_read: Vec::new(),
            mode_only: Vec::new(),
            seen_files: HashSet::with_capacity(self.files.len() + self.vanished.len()),
            unreadable: self.unreadable,
            warnings: self.warnings,
        };
        w.seen_files.extend(self.vanished);
        for (rel, st) in self.files {
            w.seen_files.insert(rel.clone());
            match index.get(&rel) {
                Some(row) if st.matches(row) && row.executable == st.executable => {}
                Some(row) if st.matches(row) => w.mode_only.push((rel, st)),
                _ => w.to_read.push((rel, st)),
            }
        }
        w
    }
}

fn walk(root: &Path, gi: &Gitignore) -> Result<OnDisk> {
    let mut w = OnDisk {
        dirs: Vec::new(),
        files: Vec::new(),
        vanished: Vec::new(),
        unreadable: Vec::new(),
        warnings: Vec::new(),
    };
    let gi2 = gi.clone();
    let walker = ignore::WalkBuilder::new(root)
        .standard_filters(false)
        .follow_links(false)
        .sort_by_file_name(|a, b| a.cmp(b))
        .filter_entry(move |e| {
            // Top-down, and an ignored directory is never entered: every parent of
            // this entry was already matched, so only the entry itself is.
            let is_dir = e.file_type().is_some_and(|t| t.is_dir());
            e.depth() == 0 || !gi2.matched(e.path(), is_dir).is_ignore()
        })
        .build();
    for item in walker {
        let entry = match item {
            Ok(e) => e,
            Err(err) => {
                // An error at the root means the folder is unreadable as a whole: never
                // read that as "everything was deleted".
                let path = err_path(&err);
                match path.as_deref().map(|p| RelPath::from_path(root, p)) {
                    Some(Ok(rel)) => {
                        w.warnings.push(format!("{rel}: cannot read: {err}"));
                        w.unreadable.push(rel);
                    }
                    _ => return Err(StoreError::RootMissing(root.to_path_buf())),
                }
                continue;
            }
        };
        if entry.depth() == 0 {
            continue;
        }
        let rel = match RelPath::from_path(root, entry.path()) {
            Ok(r) => r,
            Err(e) => {
                w.warnings
                    .push(format!("{}: skipped: {e}", entry.path().display()));
                continue;
            }
        };
        let Some(ft) = entry.file_type() else {
            continue;
        };
        if ft.is_symlink() {
            w.warnings.push(format!("{rel}: symlink, not synced"));
            continue;
        }
        if ft.is_dir() {
            w.dirs.push(rel);
            continue;
        }
        if !ft.is_file() {
            w.warnings.push(format!(
                "{rel}: not a regular file (device, socket or pipe), not synced"
            ));
            continue;
        }
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) => {
                // Vanished between listing and stat: the next scan sees the truth.
                w.warnings.push(format!("{rel}: {e}"));
                w.vanished.push(rel);
                continue;
            }
        };
        w.files.push((rel, Stat::of(&meta)));
    }
    Ok(w)
}

fn err_path(e: &ignore::Error) -> Option<PathBuf> {
    match e {
        ignore::Error::WithPath { path, .. } => Some(path.clone()),
        ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => {
            err_path(err)
        }
        _ => None,
    }
}

/// Messages from the cutters and the sealers to the writer.
enum Msg {
    Chunk {
        file: usize,
        idx: u32,
        sealed: SealedChunk,
    },
    End {
        file: usize,
        item: usize,
        attempt: FileAttempt,
    },
}

/// Plaintext bytes cut but not yet written, at most: a dozen chunks of the largest
/// kind, more than the channels hold of ordinary ones, so only large chunks wait on it.
const IN_FLIGHT_BYTES: usize = 16 << 20;
/// The largest chunk buffer handed back for reuse.
const POOLED_BUFFER: usize = crate::chunker::SMALL.max + weft_crypto::chunk::CHUNK_OVERHEAD;

/// Counts the bytes between the cutters and the writer; a cutter waits when they
/// would pass the bound. Closed when the writer stops, so no cutter ever waits for
/// a writer that is gone.
struct Budget {
    state: std::sync::Mutex<(usize, bool)>,
    freed: std::sync::Condvar,
}

impl Budget {
    fn new(bytes: usize) -> Budget {
        Budget {
            state: std::sync::Mutex::new((bytes, false)),
            freed: std::sync::Condvar::new(),
        }
    }

    /// Takes `n` bytes (at most the bound), waiting for them; `Err` once closed.
    fn take(&self, n: usize) -> std::result::Result<(), ()> {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while g.0 < n && !g.1 {
            g = self.freed.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        if g.1 {
            return Err(());
        }
        g.0 -= n;
        Ok(())
    }

    fn give(&self, n: usize) {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        g.0 += n;
        // Every waiting cutter looks: the one woken might need more than is free while
        // another needs less.
        self.freed.notify_all();
    }

    fn close(&self) {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        g.1 = true;
        self.freed.notify_all();
    }
}

struct Job {
    file: usize,
    idx: u32,
    data: Vec<u8>,
}

enum FileAttempt {
    /// Read completely and unchanged throughout.
    Stable { chunks: u32, stat: Stat, bytes: u64 },
    /// Changed while being read: discard this attempt's chunks (a retry follows under a
    /// new file number unless attempts ran out).
    Unstable { warn: Option<String> },
    /// Could not be read.
    Failed { warn: String },
}

/// Reads and cuts one file, sending its chunks; returns how the attempt went.
fn cut_file(
    buf: &mut crate::chunker::Buffer,
    path: &Path,
    file_no: usize,
    jobs: &Sender<Job>,
    free: &Receiver<Vec<u8>>,
    budget: &Budget,
) -> std::result::Result<FileAttempt, ()> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            return Ok(FileAttempt::Failed {
                warn: format!("{}: {e}", path.display()),
            });
        }
    };
    let before = match f.metadata() {
        Ok(m) => Stat::of(&m),
        Err(e) => {
            return Ok(FileAttempt::Failed {
                warn: format!("{}: {e}", path.display()),
            });
        }
    };
    // A file written this recently may be rewritten in place within one timestamp tick,
    // which no stat can see: its bytes are hashed as they are cut and read once more.
    let mut check = written_lately(before.mtime_ns).then(blake3::Hasher::new);
    let mut idx = 0u32;
    let mut hung_up = false;
    let params = crate::chunker::params_for(before.size);
    let res = crate::chunker::cut_with::<_, std::io::Error>(buf, params, &f, |c| {
        if let Some(h) = check.as_mut() {
            h.update(c);
        }
        let mut data = free.try_recv().unwrap_or_default();
        budget.take(c.len()).map_err(|()| {
            hung_up = true;
            std::io::Error::other("writer stopped")
        })?;
        data.clear();
        // Room for the tag the worker appends when it seals this buffer in place.
        data.reserve(c.len() + weft_crypto::chunk::CHUNK_OVERHEAD);
        data.extend_from_slice(c);
        let job = Job {
            file: file_no,
            idx,
            data,
        };
        idx += 1;
        jobs.send(job).map_err(|_| {
            hung_up = true;
            std::io::Error::other("writer stopped")
        })
    });
    if hung_up {
        return Err(());
    }
    let bytes = match res {
        Ok(b) => b,
        Err(e) => {
            return Ok(FileAttempt::Failed {
                warn: format!("{}: {e}", path.display()),
            });
        }
    };
    let mut same = bytes == before.size;
    if let Some(first) = check
        && same
    {
        same = hash_again(&f, before.size).ok() == Some(first.finalize());
    }
    let after = f.metadata().ok().map(|m| Stat::of(&m));
    let on_path = std::fs::symlink_metadata(path).ok().map(|m| Stat::of(&m));
    if same && after == Some(before) && on_path == Some(before) {
        Ok(FileAttempt::Stable {
            chunks: idx,
            stat: before,
            bytes,
        })
    } else {
        Ok(FileAttempt::Unstable { warn: None })
    }
}

/// How close to now a file's mtime must be for its read to be checked by a second one:
/// far more than any file system's timestamp tick, so a rewrite that kept the mtime is
/// caught (unless a single write call spans both reads, which nothing in user space can
/// see), and small enough that a scan of files at rest never reads twice.
const RECENT_NS: i64 = 2_000_000_000;

fn written_lately(mtime_ns: i64) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(i64::MAX, |d| {
            i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
        });
    now.saturating_sub(mtime_ns) < RECENT_NS
}

/// BLAKE3 of a file's bytes from its start, read once more (`size`: what it should
/// hold, for the buffer's size).
fn hash_again(f: &File, size: u64) -> std::io::Result<blake3::Hash> {
    use std::os::unix::fs::FileExt;
    let mut h = blake3::Hasher::new();
    let len = usize::try_from(size).map_or(1 << 20, |s| s.saturating_add(1).min(1 << 20));
    let mut block = vec![0u8; len];
    let mut at = 0u64;
    loop {
        let n = f.read_at(&mut block, at)?;
        if n == 0 {
            return Ok(h.finalize());
        }
        h.update(&block[..n]);
        at += n as u64;
    }
}

struct Pending {
    chunks: Vec<Option<ChunkRef>>,
    got: u32,
    end: Option<FileAttempt>,
}

/// The database side of a scan: one open transaction at a time.
struct Writer<'a> {
    store: &'a Store,
    folder: &'a FolderRecord,
    keys: FolderKeys,
    txn: Option<WriteTransaction>,
    pack: crate::cache::PackWriter,
    batch_ops: usize,
    batch_bytes: u64,
    /// When the open transaction began.
    batch_began: Instant,
    /// Whether the open transaction holds a log entry.
    entries_in_batch: bool,
    /// Told of each commit that holds log entries.
    progress: &'a dyn Progress,
    batch_chunks: HashSet<weft_crypto::ChunkId>,
    summary: ScanSummary,
    now: u64,
    open: Option<OpenEntry>,
    /// Cache bytes this scan may still add (the cache budget minus its size).
    cache_room: u64,
}

impl<'a> Writer<'a> {
    fn txn(&mut self) -> Result<&WriteTransaction> {
        if self.txn.is_none() {
            self.txn = Some(self.store.db.begin_write()?);
            self.batch_began = Instant::now();
        }
        self.txn
            .as_ref()
            .ok_or_else(|| StoreError::decode("scan", "no transaction"))
    }

    fn commit(&mut self) -> Result<()> {
        self.close_entry()?;
        if let Some(txn) = self.txn.take() {
            // The pack's bytes are written (in the page cache, which survives a killed
            // process) before the commit that references them; they are not fsynced
            // here: see `cache` on why the cache trades power-loss durability for speed.
            self.pack.flush()?;
            txn.commit()?;
            if self.entries_in_batch {
                self.progress.committed();
            }
        }
        self.entries_in_batch = false;
        self.batch_ops = 0;
        self.batch_bytes = 0;
        self.batch_chunks.clear();
        Ok(())
    }

    fn maybe_commit(&mut self) -> Result<()> {
        if self.batch_ops >= BATCH_OPS
            || self.batch_bytes >= BATCH_BYTES
            || (self.batch_ops > 0 && self.batch_began.elapsed() >= BATCH_TIME)
        {
            self.commit()?;
        }
        Ok(())
    }

    /// Stores a chunk's ciphertext unless the cache has it.
    fn put_chunk(&mut self, sealed: &SealedChunk) -> Result<()> {
        if self.batch_chunks.contains(&sealed.id) {
            return Ok(());
        }
        let key = db::chunk_key(&sealed.id);
        let (cached, in_files) = {
            let txn = self.txn()?;
            let cached = txn.open_table(db::CHUNKS)?.get(key.as_slice())?.is_some();
            let in_files = txn
                .open_table(db::CHUNK_LOCS)?
                .get(key.as_slice())?
                .is_some();
            (cached, in_files)
        };
        let len = sealed.ciphertext.len() as u64;
        // New to this device: what an edit really costs to store and to send.
        if !cached && !in_files {
            self.summary.new_chunks += 1;
            self.summary.new_chunk_bytes += len;
        }
        if !cached && len <= self.cache_room {
            self.cache_room -= len;
            let loc = self.pack.append(&sealed.ciphertext)?;
            self.txn()?
                .open_table(db::CHUNKS)?
                .insert(key.as_slice(), db::enc(&loc).as_slice())?;
            self.summary.cached_bytes += len;
            self.batch_bytes += len;
        }
        self.batch_chunks.insert(sealed.id);
        Ok(())
    }

    /// Adds one operation built by `make_op` to the open entry (opening one if needed),
    /// then updates the index with `index`. An entry is closed — signed and stored —
    /// when it would name a path twice, when it is full, and before every commit.
    /// `chunks` is how many chunk references the operation will carry (its size).
    fn entry(
        &mut self,
        paths: &[&RelPath],
        chunks: usize,
        make_op: impl FnOnce(&WriteTransaction, u64) -> Result<Op>,
        index: impl FnOnce(&WriteTransaction, VersionId) -> Result<()>,
    ) -> Result<()> {
        let full = self.open.as_ref().is_some_and(|o| {
            o.ops.len() >= crate::log::MAX_OPS_PER_ENTRY
                || o.chunks + chunks > ENTRY_CHUNKS
                || paths.iter().any(|p| o.paths.contains(*p))
        });
        if full {
            self.close_entry()?;
        }
        let me = self.store.id.device_id();
        let folder = self.folder.id;
        if self.open.is_none() {
            let seq = crate::store::next_seq(self.txn()?, &folder, &me)?;
            self.open = Some(OpenEntry {
                seq,
                ops: Vec::new(),
                paths: HashSet::new(),
                chunks: 0,
            });
        }
        let seq = self.open.as_ref().map(|o| o.seq).unwrap_or(0);
        let txn = self.txn()?;
        let op = make_op(txn, seq)?;
        index(txn, VersionId { author: me, seq })?;
        if let Some(o) = self.open.as_mut() {
            o.ops.push(op);
            o.paths.extend(paths.iter().map(|p| (*p).clone()));
            o.chunks += chunks;
        }
        self.batch_ops += 1;
        self.maybe_commit()
    }

    /// Signs and stores the open entry, if any.
    fn close_entry(&mut self) -> Result<()> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        let id = self.store.id.clone();
        let folder = self.folder.id;
        let keys = self.keys.clone();
        let now = self.now;
        let txn = self.txn()?;
        let applied = append_local(txn, &id, &folder, &keys, now, |seq| {
            if seq != open.seq {
                return Err(StoreError::decode(
                    "scan",
                    "sequence moved under an open entry",
                ));
            }
            Ok(open.ops)
        })?;
        self.summary.log_entries += 1;
        self.summary.log_bytes += applied.len as u64;
        self.entries_in_batch = true;
        Ok(())
    }
}

/// An upper bound on the chunks of a file of `size` bytes.
fn chunk_bound(size: u64) -> usize {
    let bound = 1 + size / crate::chunker::params_for(size).min as u64;
    usize::try_from(bound).map_or(crate::log::MAX_MANIFEST_CHUNKS, |b| {
        b.min(crate::log::MAX_MANIFEST_CHUNKS)
    })
}

/// Operations gathered for the next entry.
struct OpenEntry {
    seq: u64,
    ops: Vec<Op>,
    paths: HashSet<RelPath>,
    chunks: usize,
}

/// An entry is closed once its manifests list this many chunks (keeps entries well
/// under [`crate::log::MAX_ENTRY_LEN`]).
const ENTRY_CHUNKS: usize = crate::log::MAX_MANIFEST_CHUNKS;

/// The vector of a new local version of `path`: it dominates what this device's disk
/// held ([`crate::store::local_base_vv`]) and carries this entry's sequence number.
fn next_vv(
    txn: &WriteTransaction,
    folder: &FolderRecord,
    path: &RelPath,
    me: weft_crypto::DeviceId,
    seq: u64,
) -> Result<crate::model::VersionVector> {
    let mut vv = crate::store::local_base_vv(txn, &folder.id, path, me)?;
    vv.set(me, seq);
    Ok(vv)
}

fn set_index(
    txn: &WriteTransaction,
    folder: &FolderRecord,
    path: &RelPath,
    row: &IndexRow,
) -> Result<()> {
    txn.open_table(db::INDEX)?.insert(
        db::key_path(&folder.id, path).as_slice(),
        db::enc(row).as_slice(),
    )?;
    Ok(())
}

fn del_index(txn: &WriteTransaction, folder: &FolderRecord, path: &RelPath) -> Result<()> {
    txn.open_table(db::INDEX)?
        .remove(db::key_path(&folder.id, path).as_slice())?;
    Ok(())
}

fn manifest_in(
    txn: &WriteTransaction,
    folder: &FolderRecord,
    path: &RelPath,
    id: &VersionId,
) -> Result<Manifest> {
    let t = txn.open_table(db::VERSIONS)?;
    crate::store::version_manifest(&t, &folder.id, path, id)
}

impl Store {
    /// Scans `folder` and records what changed. See the module docs.
    pub fn scan(&self, folder: &FolderRecord, progress: &dyn Progress) -> Result<ScanSummary> {
        let started = Instant::now();
        let root = folder.root_path();
        check_root(&root, &folder.id)?;
        let (gi, mut warnings) = ignore_matcher(&root)?;
        let (index, on_disk) = std::thread::scope(|s| {
            let index = s.spawn(|| self.index_rows(folder));
            let on_disk = walk(&root, &gi);
            let index = index
                .join()
                .unwrap_or_else(|_| Err(StoreError::decode("scan", "index loader panicked")));
            (index, on_disk)
        });
        let index = index?;
        let w = on_disk?.compare(&index);
        warnings.extend(w.warnings.iter().cloned());
        for msg in &warnings {
            progress.warn(msg);
        }

        let mut writer = Writer {
            store: self,
            folder,
            keys: self.keys(folder),
            txn: None,
            pack: self.cache.writer()?,
            batch_ops: 0,
            batch_bytes: 0,
            batch_began: Instant::now(),
            entries_in_batch: false,
            progress,
            batch_chunks: HashSet::new(),
            summary: ScanSummary {
                folder: folder.name.clone(),
                warnings,
                ..Default::default()
            },
            now: now_ms(),
            open: None,
            // Nothing to read, nothing to cache: the budget (a pass over every
            // folder's index) is only worked out when there is.
            cache_room: if w.to_read.is_empty() {
                0
            } else {
                self.cache_budget_with(w.to_read.iter().map(|(_, s)| s.size).sum())?
                    .saturating_sub(self.cache_size()?)
            },
        };

        // Deleted: indexed, not seen, not under an unreadable directory. Ignored paths
        // are forgotten locally rather than deleted everywhere.
        let seen_dirs: HashSet<&RelPath> = w.dirs.iter().collect();
        let mut deleted_files: BTreeMap<RelPath, IndexRow> = BTreeMap::new();
        let mut deleted_dirs: Vec<RelPath> = Vec::new();
        let mut forget: Vec<RelPath> = Vec::new();
        for (path, row) in &index {
            let present = match row.kind {
                IndexKind::File => w.seen_files.contains(path),
                IndexKind::Dir => seen_dirs.contains(path),
            };
            if present || w.unreadable.iter().any(|u| path.starts_with(u)) {
                continue;
            }
            if is_ignored(&gi, &path.to_path(&root), row.kind == IndexKind::Dir) {
                forget.push(path.clone());
            } else if row.kind == IndexKind::File {
                deleted_files.insert(path.clone(), row.clone());
            } else {
                deleted_dirs.push(path.clone());
            }
        }
        // A kind change (file ↔ directory) at one path needs no delete: the new
        // version's vector dominates the old one.
        deleted_dirs.retain(|p| !w.seen_files.contains(p));
        deleted_files.retain(|p, _| !seen_dirs.contains(p));

        {
            let txn = writer.txn()?;
            for p in &forget {
                del_index(txn, folder, p)?;
            }
        }

        // New directories, parents first (the walk is sorted).
        for d in &w.dirs {
            if index.get(d).is_some_and(|r| r.kind == IndexKind::Dir) {
                continue;
            }
            let d = d.clone();
            writer.entry(
                &[&d],
                0,
                |txn, seq| {
                    let vv = next_vv(txn, folder, &d, writer_me(self), seq)?;
                    Ok(Op::Mkdir {
                        path: d.clone(),
                        vv,
                    })
                },
                |txn, vid| {
                    let m = std::fs::symlink_metadata(d.to_path(&root)).ok();
                    let st = m.as_ref().map(Stat::of);
                    set_index(
                        txn,
                        folder,
                        &d,
                        &IndexRow {
                            kind: IndexKind::Dir,
                            size: 0,
                            mtime_ns: st.map(|s| s.mtime_ns).unwrap_or(0),
                            inode: st.map(|s| s.inode).unwrap_or(0),
                            dev: st.map(|s| s.dev).unwrap_or(0),
                            executable: false,
                            hash: Hash::ZERO,
                            version: vid,
                        },
                    )
                },
            )?;
            writer.summary.dirs_added += 1;
        }

        // Executable-bit changes: same chunks, new version, no read.
        for (path, st) in &w.mode_only {
            let Some(row) = index.get(path) else { continue };
            let row = row.clone();
            let st = *st;
            writer.entry(
                &[path],
                chunk_bound(row.size),
                |txn, seq| {
                    let mut m = manifest_in(txn, folder, path, &row.version)?;
                    m.executable = st.executable;
                    let base = manifest_in(txn, folder, path, &row.version)?;
                    let vv = next_vv(txn, folder, path, writer_me(self), seq)?;
                    Ok(Op::Put {
                        path: path.clone(),
                        vv,
                        manifest: WireManifest::encode(&m, Some((path, row.version, &base))),
                    })
                },
                |txn, vid| set_index(txn, folder, path, &st.row(row.hash, vid)),
            )?;
            writer.summary.files_changed += 1;
        }

        // Moves recognised by inode: the file was renamed, not rewritten.
        let mut by_inode: HashMap<(u64, u64, u64, i64), RelPath> = deleted_files
            .iter()
            .map(|(p, r)| ((r.dev, r.inode, r.size, r.mtime_ns), p.clone()))
            .collect();
        let mut to_read = Vec::with_capacity(w.to_read.len());
        for (path, st) in w.to_read {
            let from = if index.contains_key(&path) {
                None
            } else {
                by_inode.remove(&(st.dev, st.inode, st.size, st.mtime_ns))
            };
            match from.and_then(|f| deleted_files.remove(&f).map(|r| (f, r))) {
                Some((from, row)) => {
                    writer.record_move(&from, &row, &path, st)?;
                }
                None => to_read.push((path, st)),
            }
        }

        // Read what is new or changed.
        let total_bytes: u64 = to_read.iter().map(|(_, s)| s.size).sum();
        progress.start(to_read.len() as u64, total_bytes);
        let mut by_hash: HashMap<Hash, Vec<RelPath>> = HashMap::new();
        for (p, r) in &deleted_files {
            by_hash.entry(r.hash).or_default().push(p.clone());
        }
        self.read_files(
            &root,
            &to_read,
            &index,
            &mut writer,
            &mut deleted_files,
            &mut by_hash,
            progress,
        )?;

        // The root must still be there before anything is recorded as deleted.
        if let Err(e) = check_root(&root, &folder.id) {
            writer.commit()?;
            return Err(e);
        }
        // Deletes: files, then directories children first. forget_row ignores a
        // directory's row.
        deleted_dirs.sort_by(|a, b| b.cmp(a));
        let me = writer_me(self);
        let dir_rows: Vec<(RelPath, IndexRow)> = deleted_dirs
            .into_iter()
            .filter_map(|p| index.get(&p).cloned().map(|r| (p, r)))
            .collect();
        for (path, row) in deleted_files.into_iter().chain(dir_rows) {
            writer.entry(
                &[&path],
                0,
                |txn, seq| {
                    let vv = next_vv(txn, folder, &path, me, seq)?;
                    Ok(Op::Delete {
                        path: path.clone(),
                        vv,
                    })
                },
                |txn, _| {
                    crate::locs::forget_row(txn, &folder.id, &path, &row)?;
                    del_index(txn, folder, &path)
                },
            )?;
            match row.kind {
                IndexKind::File => writer.summary.files_deleted += 1,
                IndexKind::Dir => writer.summary.dirs_deleted += 1,
            }
        }

        // Record the scan time in the last transaction.
        {
            let now = writer.now;
            let txn = writer.txn()?;
            let mut rec = folder.clone();
            rec.last_scan_ms = Some(now);
            txn.open_table(db::FOLDERS)?
                .insert(rec.id.0.as_slice(), db::enc(&rec).as_slice())?;
        }
        writer.commit()?;
        progress.finish();
        let mut summary = writer.summary;
        summary.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(summary)
    }

    /// The folder's index rows, by path.
    pub fn index_rows(&self, folder: &FolderRecord) -> Result<BTreeMap<RelPath, IndexRow>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(db::INDEX)?;
        let mut out = BTreeMap::new();
        db::scan_prefix(&t, &folder.id.0, |k, v| {
            let path = RelPath::new(k[16..].to_vec())?;
            out.insert(path, db::dec("index row", v)?);
            Ok(())
        })?;
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn read_files(
        &self,
        root: &Path,
        to_read: &[(RelPath, Stat)],
        index: &BTreeMap<RelPath, IndexRow>,
        writer: &mut Writer<'_>,
        deleted: &mut BTreeMap<RelPath, IndexRow>,
        by_hash: &mut HashMap<Hash, Vec<RelPath>>,
        progress: &dyn Progress,
    ) -> Result<()> {
        if to_read.is_empty() {
            return Ok(());
        }
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let (job_tx, job_rx) = bounded::<Job>(workers * 4);
        // Sealed chunks waiting for the writer: at most 64 (4 MiB at the average chunk
        // size, 16 MiB at the largest), whatever the file size.
        let (msg_tx, msg_rx) = bounded::<Msg>(64);
        // Buffers go round: a cutter fills one with a chunk's plaintext, a worker
        // seals it in place, the writer hands it back. New buffers would cost a page
        // fault per 4 KiB each time (the allocator hands large blocks back to the
        // system). Bounded: at most this many wait, whatever the file size.
        let free = bounded::<Vec<u8>>(workers * 4 + 32);
        let budget = Budget::new(IN_FLIGHT_BYTES);
        let secret = *writer.keys.convergence_secret();
        let turns = Turns::default();
        std::thread::scope(|s| -> Result<()> {
            for _ in 0..workers {
                let job_rx = job_rx.clone();
                let msg_tx = msg_tx.clone();
                s.spawn(move || seal_worker(&secret, job_rx, msg_tx));
            }
            drop(job_rx);
            for _ in 0..CUTTERS {
                let (job_tx, msg_tx, free) = (job_tx.clone(), msg_tx.clone(), free.1.clone());
                let (budget, turns) = (&budget, &turns);
                s.spawn(move || cutter(root, to_read, turns, job_tx, msg_tx, &free, budget));
            }
            drop(job_tx);
            drop(msg_tx);
            let res = self.collect(
                to_read, index, writer, deleted, by_hash, progress, &msg_rx, &free.0, &budget,
            );
            // On error, hang up so the cutters and workers stop.
            budget.close();
            drop(msg_rx);
            res
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn collect(
        &self,
        to_read: &[(RelPath, Stat)],
        index: &BTreeMap<RelPath, IndexRow>,
        writer: &mut Writer<'_>,
        deleted: &mut BTreeMap<RelPath, IndexRow>,
        by_hash: &mut HashMap<Hash, Vec<RelPath>>,
        progress: &dyn Progress,
        msgs: &Receiver<Msg>,
        free: &Sender<Vec<u8>>,
        budget: &Budget,
    ) -> Result<()> {
        let mut pending: HashMap<usize, Pending> = HashMap::new();
        let mut which: HashMap<usize, usize> = HashMap::new();
        for msg in msgs.iter() {
            let file_no = match msg {
                Msg::Chunk { file, idx, sealed } => {
                    writer.put_chunk(&sealed)?;
                    progress.advance(u64::from(sealed.len));
                    budget.give(sealed.len as usize);
                    // Only buffers of ordinary chunks are kept: a few dozen of the
                    // largest would hold more memory than the whole pipeline may.
                    if sealed.ciphertext.capacity() <= POOLED_BUFFER {
                        let _ = free.try_send(sealed.ciphertext);
                    }
                    let p = pending.entry(file).or_insert_with(|| Pending {
                        chunks: Vec::new(),
                        got: 0,
                        end: None,
                    });
                    let i = idx as usize;
                    if p.chunks.len() <= i {
                        p.chunks.resize(i + 1, None);
                    }
                    p.chunks[i] = Some(ChunkRef {
                        id: sealed.id,
                        key: sealed.key,
                        len: sealed.len,
                    });
                    p.got += 1;
                    file
                }
                Msg::End {
                    file,
                    item,
                    attempt,
                } => {
                    which.insert(file, item);
                    pending
                        .entry(file)
                        .or_insert_with(|| Pending {
                            chunks: Vec::new(),
                            got: 0,
                            end: None,
                        })
                        .end = Some(attempt);
                    file
                }
            };
            let done = pending.get(&file_no).is_some_and(|p| match &p.end {
                Some(FileAttempt::Stable { chunks, .. }) => p.got == *chunks,
                Some(_) => true,
                None => false,
            });
            if !done {
                continue;
            }
            let Some(p) = pending.remove(&file_no) else {
                continue;
            };
            let Some(i) = which.remove(&file_no) else {
                return Err(StoreError::decode("scan", "attempt without a file"));
            };
            let (path, _) = &to_read[i];
            match p.end {
                Some(FileAttempt::Stable { stat, bytes, .. }) => {
                    writer.summary.bytes_read += bytes;
                    let chunks: Vec<ChunkRef> = p.chunks.into_iter().flatten().collect();
                    let m = Manifest {
                        size: stat.size,
                        mtime_ns: stat.mtime_ns,
                        executable: stat.executable,
                        hash: Manifest::content_hash(&chunks),
                        chunks,
                    };
                    if m.chunks.len() > crate::log::MAX_MANIFEST_CHUNKS {
                        let w = format!(
                            "{path}: {} chunks is more than this version of weft can list for one file ({}); skipped",
                            m.chunks.len(),
                            crate::log::MAX_MANIFEST_CHUNKS
                        );
                        progress.warn(&w);
                        writer.summary.warnings.push(w);
                    } else {
                        writer.record_file(path, stat, m, index.get(path), deleted, by_hash)?;
                    }
                }
                Some(FileAttempt::Unstable { warn: Some(w) })
                | Some(FileAttempt::Failed { warn: w }) => {
                    progress.warn(&w);
                    writer.summary.warnings.push(w);
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn writer_me(store: &Store) -> weft_crypto::DeviceId {
    store.id.device_id()
}

fn seal_worker(secret: &[u8; 32], jobs: Receiver<Job>, out: Sender<Msg>) {
    for job in jobs.iter() {
        let sealed = SealedChunk::seal_owned(secret, job.data);
        if out
            .send(Msg::Chunk {
                file: job.file,
                idx: job.idx,
                sealed,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Reading threads. Reading a file and finding its cut points is sequential, and for
/// large files it was the one thread the whole scan waited on (read(2) and FastCDC of
/// every byte, while the sealers had room): two cutters take the files in turn.
const CUTTERS: usize = 2;

/// What the cutters share: the next file of the list to take, and the next attempt
/// number (one per read of a file, retries included; the writer tells attempts apart
/// by it).
#[derive(Default)]
struct Turns {
    item: std::sync::atomic::AtomicUsize,
    attempt: std::sync::atomic::AtomicUsize,
}

fn cutter(
    root: &Path,
    to_read: &[(RelPath, Stat)],
    turns: &Turns,
    jobs: Sender<Job>,
    out: Sender<Msg>,
    free: &Receiver<Vec<u8>>,
    budget: &Budget,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut buf = crate::chunker::Buffer::new();
    loop {
        let i = turns.item.fetch_add(1, Relaxed);
        let Some((path, _)) = to_read.get(i) else {
            return;
        };
        let full = path.to_path(root);
        for n in 1..=MAX_ATTEMPTS {
            let file_no = turns.attempt.fetch_add(1, Relaxed);
            let Ok(mut attempt) = cut_file(&mut buf, &full, file_no, &jobs, free, budget) else {
                return;
            };
            let retry = matches!(attempt, FileAttempt::Unstable { .. }) && n < MAX_ATTEMPTS;
            if let FileAttempt::Unstable { warn } = &mut attempt
                && !retry
            {
                *warn = Some(format!(
                    "{path}: kept changing while being read; skipped, the next scan retries"
                ));
            }
            if out
                .send(Msg::End {
                    file: file_no,
                    item: i,
                    attempt,
                })
                .is_err()
            {
                return;
            }
            if !retry {
                break;
            }
        }
    }
}

impl Writer<'_> {
    fn record_move(
        &mut self,
        from: &RelPath,
        row: &IndexRow,
        to: &RelPath,
        st: Stat,
    ) -> Result<()> {
        let folder = self.folder;
        let me = self.store.id.device_id();
        let (from, to, row) = (from.clone(), to.clone(), row.clone());
        self.entry(
            &[&from, &to],
            chunk_bound(row.size),
            |txn, seq| {
                let base = manifest_in(txn, folder, &from, &row.version)?;
                let mut m = base.clone();
                m.mtime_ns = st.mtime_ns;
                m.executable = st.executable;
                let from_vv = next_vv(txn, folder, &from, me, seq)?;
                let to_vv = next_vv(txn, folder, &to, me, seq)?;
                Ok(Op::Move {
                    from: from.clone(),
                    from_vv,
                    to: to.clone(),
                    to_vv,
                    manifest: WireManifest::encode(&m, Some((&from, row.version, &base))),
                })
            },
            |txn, vid| {
                let m = manifest_in(txn, folder, &from, &row.version)?;
                crate::locs::record(txn, &folder.id, &to, &m)?;
                del_index(txn, folder, &from)?;
                set_index(txn, folder, &to, &st.row(row.hash, vid))
            },
        )?;
        self.summary.files_moved += 1;
        Ok(())
    }

    fn record_file(
        &mut self,
        path: &RelPath,
        st: Stat,
        m: Manifest,
        old: Option<&IndexRow>,
        deleted: &mut BTreeMap<RelPath, IndexRow>,
        by_hash: &mut HashMap<Hash, Vec<RelPath>>,
    ) -> Result<()> {
        let folder = self.folder;
        let me = self.store.id.device_id();
        if let Some(old) = old.filter(|o| o.kind == IndexKind::File) {
            if old.hash == m.hash && old.executable == m.executable {
                // Touched, not changed: refresh the index row only.
                let row = st.row(m.hash, old.version);
                let txn = self.txn()?;
                set_index(txn, folder, path, &row)?;
                return Ok(());
            }
            let old = old.clone();
            self.entry(
                &[path],
                m.chunks.len(),
                |txn, seq| {
                    let base = manifest_in(txn, folder, path, &old.version).ok();
                    let vv = next_vv(txn, folder, path, me, seq)?;
                    Ok(Op::Put {
                        path: path.clone(),
                        vv,
                        manifest: WireManifest::encode(
                            &m,
                            base.as_ref().map(|b| (path, old.version, b)),
                        ),
                    })
                },
                |txn, vid| {
                    crate::locs::forget_row(txn, &folder.id, path, &old)?;
                    crate::locs::record(txn, &folder.id, path, &m)?;
                    set_index(txn, folder, path, &st.row(m.hash, vid))
                },
            )?;
            self.summary.files_changed += 1;
            return Ok(());
        }
        // New here: the content of a deleted file means a move.
        let from = by_hash.get_mut(&m.hash).and_then(|v| {
            let i = v.iter().position(|p| deleted.contains_key(p))?;
            Some(v.swap_remove(i))
        });
        if let Some(from) = from
            && let Some(row) = deleted.remove(&from)
        {
            return self.record_move(&from, &row, path, st);
        }
        self.entry(
            &[path],
            m.chunks.len(),
            |txn, seq| {
                let vv = next_vv(txn, folder, path, me, seq)?;
                Ok(Op::Put {
                    path: path.clone(),
                    vv,
                    manifest: WireManifest::Full(m.clone()),
                })
            },
            |txn, vid| {
                crate::locs::record(txn, &folder.id, path, &m)?;
                set_index(txn, folder, path, &st.row(m.hash, vid))
            },
        )?;
        self.summary.files_added += 1;
        Ok(())
    }
}

#[allow(dead_code)]
fn version_record(
    txn: &WriteTransaction,
    folder: &FolderRecord,
    path: &RelPath,
    id: &VersionId,
) -> Result<Option<VersionRecord>> {
    let t = txn.open_table(db::VERSIONS)?;
    let v = t.get(db::key_version(&folder.id, path, id).as_slice())?;
    v.map(|v| db::dec("version", v.value())).transpose()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Slows the writer down, as a large folder would, and looks at the store from
    /// outside at each commit the scan reports.
    struct Watch<'a> {
        store: &'a Store,
        folder: &'a FolderRecord,
        indexed_at_commits: Mutex<Vec<usize>>,
    }

    impl Progress for Watch<'_> {
        fn advance(&self, _bytes: u64) {
            std::thread::sleep(Duration::from_millis(20));
        }
        fn committed(&self) {
            let n = self.store.index_rows(self.folder).unwrap().len();
            self.indexed_at_commits.lock().unwrap().push(n);
        }
    }

    /// A node tells its peers at each commit, so a long scan's first files can travel
    /// while it reads the rest: the scan must commit on the way, not only at the end,
    /// and say so each time with the files it committed readable by others.
    #[test]
    fn a_long_scan_commits_and_says_so_as_it_goes() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, root) = crate::testing::scratch(tmp.path());
        let folder = store.add_folder(&root, None).unwrap();
        for i in 0..40 {
            let data = crate::chunker::tests::data(1000 + i, i as u64 + 1);
            std::fs::write(root.join(format!("f{i:02}")), data).unwrap();
        }
        let watch = Watch {
            store: &store,
            folder: &folder,
            indexed_at_commits: Mutex::new(Vec::new()),
        };
        let summary = store.scan(&folder, &watch).unwrap();
        assert_eq!(summary.files_added, 40);
        let seen = watch.indexed_at_commits.into_inner().unwrap();
        // 40 one-chunk files at 20 ms each: 0.8 s, at least two batches of 250 ms.
        assert!(seen.len() >= 2, "commits reported: {seen:?}");
        assert!(seen[0] > 0 && seen[0] < 40, "{seen:?}");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(store.index_rows(&folder).unwrap().len(), 40);
        let report = store.verify().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
}
