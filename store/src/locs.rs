//! Where current chunks can be read from the files themselves, and the cache budget.
//!
//! The chunk cache holds ciphertext for history, within a budget (by default 10% of
//! the indexed bytes, at least 64 MiB; `[cache] max_bytes` overrides it). Current
//! versions do not need it: every chunk of an indexed file is listed in
//! `chunk-locs-1` with the file, offset and key, and [`Store::chunk`] reads it from
//! there and re-seals it — trusted while the file matches its index row, as a scan
//! trusts it, else checked against its id, so a file changed since its scan simply
//! yields nothing. So peers are served, and local files deduplicated, without copying
//! every byte of a folder into the cache.
use crate::db::{self, CacheLoc, FolderRecord, IndexRow};
use crate::error::Result;
use crate::model::{Manifest, RelPath};
use crate::scan::Stat;
use crate::store::Store;
use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weft_crypto::{ChunkId, ChunkKey, FolderId};

/// Where a chunk of a current file lies.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileLoc {
    /// The folder.
    pub folder: FolderId,
    /// The file.
    pub path: RelPath,
    /// Byte offset of the chunk in the file.
    pub offset: u64,
    /// Plaintext length.
    pub len: u32,
    /// The chunk key (to re-seal and check it).
    pub key: ChunkKey,
}

/// Records every chunk of `m` as readable from `path` (inside a write transaction).
pub(crate) fn record(
    txn: &WriteTransaction,
    folder: &FolderId,
    path: &RelPath,
    m: &Manifest,
) -> Result<()> {
    let mut t = txn.open_table(db::CHUNK_LOCS)?;
    let mut offset = 0u64;
    for c in &m.chunks {
        let loc = FileLoc {
            folder: *folder,
            path: path.clone(),
            offset,
            len: c.len,
            key: c.key,
        };
        t.insert(db::chunk_key(&c.id).as_slice(), db::enc(&loc).as_slice())?;
        offset += u64::from(c.len);
    }
    Ok(())
}

/// Forgets the locations of `old`'s chunks that point at `path` (its content is gone
/// or replaced), inside a write transaction.
pub(crate) fn forget(
    txn: &WriteTransaction,
    folder: &FolderId,
    path: &RelPath,
    old: &Manifest,
) -> Result<()> {
    let mut t = txn.open_table(db::CHUNK_LOCS)?;
    for c in &old.chunks {
        let k = db::chunk_key(&c.id);
        let here = match t.get(k.as_slice())? {
            Some(v) => {
                let fl: FileLoc = db::dec("chunk location", v.value())?;
                fl.folder == *folder && fl.path == *path
            }
            None => false,
        };
        if here {
            t.remove(k.as_slice())?;
        }
    }
    Ok(())
}

/// [`forget`] for the version an index row names, if it is a file version.
pub(crate) fn forget_row(
    txn: &WriteTransaction,
    folder: &FolderId,
    path: &RelPath,
    row: &crate::db::IndexRow,
) -> Result<()> {
    if row.kind != crate::db::IndexKind::File {
        return Ok(());
    }
    let versions = txn.open_table(db::VERSIONS)?;
    if let Ok(m) = crate::store::version_manifest(&versions, folder, path, &row.version) {
        drop(versions);
        forget(txn, folder, path, &m)?;
    }
    Ok(())
}

/// A file written from a remote version, for [`Store::record_written`].
pub struct WrittenFile<'a> {
    /// Where it is in the folder.
    pub path: &'a RelPath,
    /// The index row it replaced, if any.
    pub old: Option<&'a IndexRow>,
    /// The version's manifest.
    pub manifest: &'a Manifest,
    /// Its new index row (the file as it is on disk now).
    pub row: &'a IndexRow,
}

impl Store {
    /// Replaces the chunk locations of `path`: those of the version in `old` go, those
    /// of `new` (if any) come (after the disk changed under a remote change).
    pub fn replace_locs(
        &self,
        folder: &FolderId,
        path: &RelPath,
        old: Option<&IndexRow>,
        new: Option<&Manifest>,
    ) -> Result<()> {
        let txn = self.begin_light()?;
        if let Some(row) = old {
            forget_row(&txn, folder, path, row)?;
        }
        if let Some(m) = new {
            record(&txn, folder, path, m)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Records files just written from remote versions, in one light transaction:
    /// for each, the chunk locations of the version its old index row named go, those
    /// of its manifest come, and its new index row is set. A batch of small files
    /// costs one commit instead of two per file (most of the receiver's database time
    /// in a many-small-files sync).
    pub fn record_written(&self, folder: &FolderId, files: &[WrittenFile<'_>]) -> Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        let txn = self.begin_light()?;
        for f in files {
            if let Some(row) = f.old {
                forget_row(&txn, folder, f.path, row)?;
            }
            record(&txn, folder, f.path, f.manifest)?;
        }
        {
            let mut t = txn.open_table(db::INDEX)?;
            for f in files {
                let k = db::key_path(folder, f.path);
                t.insert(k.as_slice(), db::enc(f.row).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The cache budget in bytes.
    pub fn cache_budget(&self) -> Result<u64> {
        self.cache_budget_with(0)
    }

    /// The cache budget once `more` bytes are indexed (a scan about to read them).
    pub(crate) fn cache_budget_with(&self, more: u64) -> Result<u64> {
        if let Some(max) = self.config.cache.max_bytes {
            return Ok(max);
        }
        let mut indexed = more;
        for f in self.folders()? {
            indexed += self.index_rows(&f)?.values().map(|r| r.size).sum::<u64>();
        }
        let share = indexed / 100 * u64::from(self.config.cache.percent);
        Ok(share.max(self.config.cache.min_bytes))
    }

    /// Bytes in the cache's pack files.
    pub fn cache_size(&self) -> Result<u64> {
        Ok(self.cache.packs()?.iter().map(|(_, l)| l).sum())
    }

    /// A chunk's ciphertext: from the cache (checked against its id), or read from a
    /// current file and re-sealed. A file that still matches its index row (size,
    /// mtime, inode: what a scan trusts to skip it) yields the chunk the scan recorded
    /// without hashing it again; one that does not is checked against the id. The
    /// requester checks every chunk against its id anyway. `None` if this device
    /// cannot produce it.
    pub fn chunk(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        Ok(self
            .chunks(std::slice::from_ref(id), usize::MAX)?
            .pop()
            .flatten())
    }

    /// [`Store::chunk`] for several chunks, in order, looked up in one read
    /// transaction; stops once `max_bytes` of ciphertext were produced (the answer is
    /// then shorter than `ids`).
    pub fn chunks(&self, ids: &[ChunkId], max_bytes: usize) -> Result<Vec<Option<Vec<u8>>>> {
        let r = self.db.begin_read()?;
        let cache_t = r.open_table(db::CHUNKS)?;
        let locs_t = r.open_table(db::CHUNK_LOCS)?;
        let index_t = r.open_table(db::INDEX)?;
        let folders_t = r.open_table(db::FOLDERS)?;
        let mut roots: std::collections::HashMap<FolderId, Option<PathBuf>> =
            std::collections::HashMap::new();
        let mut out = Vec::with_capacity(ids.len());
        let mut bytes = 0usize;
        for id in ids {
            if bytes >= max_bytes {
                break;
            }
            let k = db::chunk_key(id);
            let cached: Option<CacheLoc> = cache_t
                .get(k.as_slice())?
                .map(|v| db::dec("cache location", v.value()))
                .transpose()?;
            if let Some(loc) = cached
                && let Ok(ct) = self.cache.read(&loc)
                && id.check(&ct).is_ok()
            {
                bytes += ct.len();
                out.push(Some(ct));
                continue;
            }
            let file: Option<FileLoc> = locs_t
                .get(k.as_slice())?
                .map(|v| db::dec("chunk location", v.value()))
                .transpose()?;
            let Some(fl) = file else {
                out.push(None);
                continue;
            };
            let root = match roots.get(&fl.folder) {
                Some(r) => r.clone(),
                None => {
                    let rec: Option<FolderRecord> = folders_t
                        .get(fl.folder.0.as_slice())?
                        .map(|v| db::dec("folder", v.value()))
                        .transpose()?;
                    let root = rec.map(|f| f.root_path());
                    roots.insert(fl.folder, root.clone());
                    root
                }
            };
            let Some(root) = root else {
                out.push(None);
                continue;
            };
            let row: Option<IndexRow> = index_t
                .get(db::key_path(&fl.folder, &fl.path).as_slice())?
                .map(|v| db::dec("index row", v.value()))
                .transpose()?;
            let ct = self.seal_from_file(&fl.path.to_path(&root), &fl, id, row.as_ref());
            if let Some(ct) = &ct {
                bytes += ct.len();
            }
            out.push(ct);
        }
        Ok(out)
    }

    /// A chunk read from `path` and sealed (see [`seal_from`]), through a file kept
    /// open from an earlier chunk if there is one.
    fn seal_from_file(
        &self,
        path: &Path,
        fl: &FileLoc,
        id: &ChunkId,
        row: Option<&IndexRow>,
    ) -> Option<Vec<u8>> {
        // A file kept open may be an older version of the path (replaced since): it no
        // longer matches the index row, so what it yields is checked against the id,
        // and on a mismatch the path is opened afresh.
        if let Some(f) = self.open_files.get(path) {
            if let Some(ct) = seal_from(&f, fl, id, row) {
                return Some(ct);
            }
            self.open_files.forget(path);
        }
        let f = Arc::new(File::open(path).ok()?);
        let ct = seal_from(&f, fl, id, row)?;
        self.open_files.put(path.to_path_buf(), f);
        Some(ct)
    }

    /// Whether this device can probably produce a chunk (cached, or listed in a
    /// current file; [`Store::chunk`] has the final word).
    pub fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        let r = self.db.begin_read()?;
        let k = db::chunk_key(id);
        Ok(r.open_table(db::CHUNKS)?.get(k.as_slice())?.is_some()
            || r.open_table(db::CHUNK_LOCS)?.get(k.as_slice())?.is_some())
    }

    /// Drops chunk locations whose file is no longer indexed, and evicts the oldest
    /// packs while the cache is over budget. Returns (locations dropped, chunks
    /// evicted).
    pub(crate) fn trim(
        &self,
        txn: &WriteTransaction,
        folders: &[FolderRecord],
    ) -> Result<(u64, Vec<u32>)> {
        let mut dropped = 0u64;
        {
            let index = txn.open_table(db::INDEX)?;
            let mut locs = txn.open_table(db::CHUNK_LOCS)?;
            let mut stale = Vec::new();
            for item in locs.iter()? {
                let (k, v) = item?;
                let fl: FileLoc = db::dec("chunk location", v.value())?;
                let known = folders.iter().any(|f| f.id == fl.folder)
                    && index
                        .get(db::key_path(&fl.folder, &fl.path).as_slice())?
                        .is_some();
                if !known {
                    stale.push(k.value().to_vec());
                }
            }
            for k in stale {
                locs.remove(k.as_slice())?;
                dropped += 1;
            }
        }
        let budget = self.cache_budget()?;
        let mut packs = self.cache.packs()?;
        let mut size: u64 = packs.iter().map(|(_, l)| l).sum();
        let mut evict = Vec::new();
        packs.reverse();
        while size > budget {
            let Some((n, len)) = packs.pop() else { break };
            evict.push(n);
            size -= len;
        }
        if !evict.is_empty() {
            let mut t = txn.open_table(db::CHUNKS)?;
            let mut gone = Vec::new();
            for item in t.iter()? {
                let (k, v) = item?;
                let loc: CacheLoc = db::dec("cache location", v.value())?;
                if evict.contains(&loc.pack) {
                    gone.push(k.value().to_vec());
                }
            }
            for k in gone {
                t.remove(k.as_slice())?;
            }
        }
        Ok((dropped, evict))
    }
}

/// Reads a chunk from a file and seals it in one buffer (room for the tag). Trusted
/// if the file, after the read, still matches `row`; else `None` unless it matches
/// `id`.
fn seal_from(f: &File, fl: &FileLoc, id: &ChunkId, row: Option<&IndexRow>) -> Option<Vec<u8>> {
    let len = fl.len as usize;
    let mut buf = Vec::with_capacity(len + weft_crypto::chunk::CHUNK_OVERHEAD);
    // Read into the buffer's spare capacity: zeroing it first cost a tenth of what
    // serving a chunk costs. A read may run into the tag's room; that is cut off.
    while buf.len() < len {
        let at = fl.offset + buf.len() as u64;
        let got = rustix::io::pread(f, rustix::buffer::spare_capacity(&mut buf), at).ok()?;
        if got == 0 {
            return None; // the file is shorter than the chunk location says
        }
    }
    buf.truncate(len);
    let unchanged = row.is_some_and(|row| f.metadata().is_ok_and(|m| Stat::of(&m).matches(row)));
    fl.key.seal_in_place(&mut buf);
    (unchanged || id.check(&buf).is_ok()).then_some(buf)
}

/// How many files [`OpenFiles`] keeps open, and for how long after their last use.
const OPEN_FILES: usize = 8;
const OPEN_FOR: Duration = Duration::from_secs(5);

/// Files recently read to serve chunks, kept open for a few seconds: a peer fetches
/// a file chunk by chunk, and opening it for each one (a path walk, and an inotify
/// event for this folder's own watcher) cost more than the read. Bounded: at most
/// [`OPEN_FILES`], each closed once unused for [`OPEN_FOR`] (checked on every use).
#[derive(Default)]
pub(crate) struct OpenFiles(Mutex<Vec<(PathBuf, Arc<File>, Instant)>>);

impl OpenFiles {
    fn get(&self, path: &Path) -> Option<Arc<File>> {
        let mut v = self.0.lock().ok()?;
        v.retain(|(_, _, at)| at.elapsed() < OPEN_FOR);
        let e = v.iter_mut().find(|(p, _, _)| p == path)?;
        e.2 = Instant::now();
        Some(e.1.clone())
    }

    fn put(&self, path: PathBuf, f: Arc<File>) {
        let Ok(mut v) = self.0.lock() else { return };
        v.retain(|(p, _, _)| *p != path);
        if v.len() >= OPEN_FILES
            && let Some(oldest) = (0..v.len()).min_by_key(|&i| v[i].2)
        {
            v.swap_remove(oldest);
        }
        v.push((path, f, Instant::now()));
    }

    fn forget(&self, path: &Path) {
        if let Ok(mut v) = self.0.lock() {
            v.retain(|(p, _, _)| p != path);
        }
    }
}

/// The `[cache]` section of `config.toml`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// A fixed budget in bytes (overrides the two below).
    pub max_bytes: Option<u64>,
    /// The budget as a share of the indexed bytes, in percent.
    pub percent: u32,
    /// The smallest budget, in bytes.
    pub min_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_bytes: None,
            percent: 10,
            min_bytes: 64 << 20,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use weft_crypto::SealedChunk;

    /// The chunk location of `id`, if any.
    fn loc_of(store: &Store, id: &ChunkId) -> Option<FileLoc> {
        let r = store.db.begin_read().unwrap();
        let t = r.open_table(db::CHUNK_LOCS).unwrap();
        let v = t.get(db::chunk_key(id).as_slice()).unwrap()?;
        Some(db::dec("chunk location", v.value()).unwrap())
    }

    /// A batch of files written from remote versions: each index row is replaced, the
    /// chunks of the content a file no longer holds stop pointing at it, and every
    /// chunk of its new content can be read from it at the right offset (a file new to
    /// the folder, without an old row, too). An empty batch changes nothing.
    #[test]
    fn record_written_moves_index_rows_and_chunk_locations_together() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, root) = crate::testing::scratch(tmp.path());
        // Two different contents of several chunks each.
        let (x, y) = (
            crate::chunker::tests::data(600_000, 1),
            crate::chunker::tests::data(600_000, 2),
        );
        std::fs::write(root.join("a.bin"), &x).unwrap();
        std::fs::write(root.join("b.bin"), &y).unwrap();
        let folder = store.add_folder(&root, None).unwrap();
        store.scan(&folder, &crate::scan::NoProgress).unwrap();
        let rows = store.index_rows(&folder).unwrap();
        let (a, b, c) = (
            RelPath::new(b"a.bin".to_vec()).unwrap(),
            RelPath::new(b"b.bin".to_vec()).unwrap(),
            RelPath::new(b"c.bin".to_vec()).unwrap(),
        );
        let (ra, rb) = (rows[&a].clone(), rows[&b].clone());
        let ma = store.manifest(&folder.id, &a, &ra.version).unwrap();
        let mb = store.manifest(&folder.id, &b, &rb.version).unwrap();
        assert!(ma.chunks.len() > 2 && mb.chunks.len() > 2);
        assert!(
            ma.chunks
                .iter()
                .all(|c| !mb.chunks.iter().any(|d| d.id == c.id))
        );

        store.record_written(&folder.id, &[]).unwrap();
        assert_eq!(store.index_rows(&folder).unwrap(), rows);

        // a.bin now holds b's content (written from a remote version), c.bin is new.
        std::fs::write(root.join("a.bin"), &y).unwrap();
        std::fs::write(root.join("c.bin"), &y).unwrap();
        let row_for = |p: &str, seq: u64| {
            let author = store.identity().device_id();
            Stat::of(&std::fs::metadata(root.join(p)).unwrap())
                .row(mb.hash, crate::model::VersionId { author, seq })
        };
        let (new_a, new_c) = (row_for("a.bin", 90), row_for("c.bin", 91));
        store
            .record_written(
                &folder.id,
                &[
                    WrittenFile {
                        path: &a,
                        old: Some(&ra),
                        manifest: &mb,
                        row: &new_a,
                    },
                    WrittenFile {
                        path: &c,
                        old: None,
                        manifest: &mb,
                        row: &new_c,
                    },
                ],
            )
            .unwrap();

        let rows = store.index_rows(&folder).unwrap();
        assert_eq!(rows[&a], new_a);
        assert_eq!(rows[&c], new_c);
        assert_eq!(rows[&b], rb);
        for ch in &ma.chunks {
            assert!(loc_of(&store, &ch.id).is_none_or(|l| l.path != a));
        }
        let mut offset = 0u64;
        for ch in &mb.chunks {
            let l = loc_of(&store, &ch.id).unwrap();
            // The batch's last file is where each chunk is read from now.
            assert_eq!(
                (l.path.clone(), l.offset, l.len),
                (c.clone(), offset, ch.len)
            );
            offset += u64::from(ch.len);
        }
        // Served from c.bin, whose disk matches its new row: the sealed chunk checks.
        let first = &mb.chunks[0];
        let f = File::open(root.join("c.bin")).unwrap();
        let ct = seal_from(
            &f,
            &loc_of(&store, &first.id).unwrap(),
            &first.id,
            Some(&new_c),
        )
        .unwrap();
        assert!(first.id.check(&ct).is_ok());
    }

    /// A chunk in the middle of a file, read straight into spare capacity, seals to
    /// exactly what the scan produced; a file now shorter than the location, or whose
    /// bytes changed without the index knowing, yields nothing.
    #[test]
    fn seal_from_reads_exactly_the_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let (offset, len) = (100_000usize, 70_000usize);
        let want = SealedChunk::seal(&[9; 32], &data[offset..offset + len]);
        let fl = FileLoc {
            folder: FolderId([1; 16]),
            path: RelPath::new(b"f".to_vec()).unwrap(),
            offset: offset as u64,
            len: len as u32,
            key: want.key,
        };
        let f = File::open(&p).unwrap();
        assert_eq!(seal_from(&f, &fl, &want.id, None), Some(want.ciphertext));

        std::fs::write(&p, &data[..offset + len - 1]).unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(seal_from(&f, &fl, &want.id, None), None);

        let mut changed = data.clone();
        changed[offset + 5] ^= 1;
        std::fs::write(&p, &changed).unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(seal_from(&f, &fl, &want.id, None), None);
    }
}
