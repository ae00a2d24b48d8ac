//! Version history: listing a file's versions, restoring one, the change log listing,
//! and garbage collection of the chunk cache under the retention policy.
//!
//! A version is **retained** while it is a current head, and for
//! `history.retention_days` after a later version superseded it (deleted files
//! included: the version before the tombstone is superseded by it). `weft gc` removes
//! every cached chunk no retained version references and compacts the pack files.
use crate::db::{self, CacheLoc, FolderRecord, IndexKind, IndexRow, VersionRecord};
use crate::error::{Result, StoreError};
use crate::log::{Entry, Op, WireManifest};
use crate::model::{Content, Manifest, RelPath, VersionId};
use crate::store::{Store, append_local, now_ms};
use redb::{ReadableDatabase, ReadableTable};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use weft_crypto::{ChunkId, SealedChunk};

/// One row of `weft history`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HistoryItem {
    /// 1 for the oldest version, counting up.
    pub number: u64,
    /// When the version was written, Unix ms.
    pub time_ms: u64,
    /// `file`, `dir` or `deleted`.
    pub kind: &'static str,
    /// Size of a file version.
    pub size: Option<u64>,
    /// How many chunks a file version is cut into, when its manifest is here.
    pub chunks: Option<usize>,
    /// The author device's id.
    pub author: String,
    /// The author device's name, when known.
    pub author_name: Option<String>,
    /// Whether this is the current version.
    pub current: bool,
    /// Whether every chunk is available here to restore it.
    pub restorable: bool,
    /// The version's entry sequence number.
    pub seq: u64,
}

/// One row of `weft log`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LogItem {
    /// The author device's id.
    pub author: String,
    /// The author device's name, when known.
    pub author_name: Option<String>,
    /// Sequence number in the author's chain.
    pub seq: u64,
    /// Unix ms.
    pub time_ms: u64,
    /// Operation name.
    pub op: &'static str,
    /// The path (the source, for a move).
    pub path: String,
    /// The destination of a move.
    pub to: Option<String>,
}

/// What `weft restore` did.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RestoreReport {
    /// Where the bytes were written (shown lossily if not UTF-8).
    pub written_to: String,
    /// How many.
    pub bytes: u64,
    /// The restored version's number.
    pub version: u64,
    /// Whether it was recorded as a new version (restoring in place).
    pub new_version: bool,
}

/// What `weft gc` did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GcReport {
    /// Versions past retention.
    pub versions_expired: u64,
    /// Cached chunks removed.
    pub chunks_removed: u64,
    /// Disk bytes freed.
    pub bytes_freed: u64,
    /// Pack files deleted.
    pub packs_removed: u64,
    /// Pack files compacted.
    pub packs_rewritten: u64,
}

impl Store {
    /// The versions of `path`, oldest first, numbered from 1.
    pub fn history(
        &self,
        folder: &FolderRecord,
        path: &RelPath,
    ) -> Result<Vec<(HistoryItem, VersionRecord)>> {
        let r = self.db.begin_read()?;
        let versions = r.open_table(db::VERSIONS)?;
        let chunks = r.open_table(db::CHUNKS)?;
        let locs = r.open_table(db::CHUNK_LOCS)?;
        let devices = r.open_table(db::DEVICES)?;
        let mut recs: Vec<VersionRecord> = Vec::new();
        db::scan_prefix(
            &versions,
            &db::key_path_versions(&folder.id, path),
            |_, v| {
                recs.push(db::dec("version", v)?);
                Ok(())
            },
        )?;
        recs.sort_by_key(|r| (r.time_ms, r.version.id));
        let mut out = Vec::with_capacity(recs.len());
        for (i, rec) in recs.into_iter().enumerate() {
            let restorable = match &rec.manifest {
                Some(m) => {
                    let mut ok = true;
                    for c in &m.chunks {
                        if chunks.get(db::chunk_key(&c.id).as_slice())?.is_none()
                            && locs.get(db::chunk_key(&c.id).as_slice())?.is_none()
                        {
                            ok = false;
                            break;
                        }
                    }
                    ok
                }
                None => false,
            };
            let author_name = devices
                .get(rec.version.id.author.as_bytes().as_slice())?
                .and_then(|v| weft_crypto::DeviceCertificate::from_bytes(v.value()).ok())
                .map(|c| c.body.name);
            let (kind, size) = match &rec.version.content {
                Content::File { size, .. } => ("file", Some(*size)),
                Content::Dir => ("dir", None),
                Content::Deleted => ("deleted", None),
            };
            out.push((
                HistoryItem {
                    number: i as u64 + 1,
                    time_ms: rec.time_ms,
                    kind,
                    size,
                    chunks: rec.manifest.as_ref().map(|m| m.chunks.len()),
                    author: rec.version.id.author.to_string(),
                    author_name,
                    current: rec.superseded_ms.is_none(),
                    restorable,
                    seq: rec.version.id.seq,
                },
                rec,
            ));
        }
        Ok(out)
    }

    /// One chunk's plaintext, from wherever this device has it ([`Store::chunk`]),
    /// checked against its id and opened with its key.
    fn chunk_plaintext(&self, c: &crate::model::ChunkRef) -> Result<Option<Vec<u8>>> {
        Ok(match self.chunk(&c.id)? {
            Some(ct) => SealedChunk::open(&c.id, &c.key, c.len, &ct).ok(),
            None => None,
        })
    }

    /// Writes version `number` of `path` to `to`, or back in place (as a new version).
    pub fn restore(
        &self,
        folder: &FolderRecord,
        path: &RelPath,
        number: u64,
        to: Option<&Path>,
    ) -> Result<RestoreReport> {
        self.restore_with(folder, path, number, to, &|_| None)
    }

    /// [`Store::restore`], asking `fetch` (the node: other devices) for chunks this
    /// device lacks. Fetched chunks are checked against their ids like any other.
    pub fn restore_with(
        &self,
        folder: &FolderRecord,
        path: &RelPath,
        number: u64,
        to: Option<&Path>,
        fetch: &dyn Fn(&ChunkId) -> Option<Vec<u8>>,
    ) -> Result<RestoreReport> {
        let hist = self.history(folder, path)?;
        let (_, rec) = hist
            .into_iter()
            .find(|(h, _)| h.number == number)
            .ok_or_else(|| StoreError::NoSuchVersion {
                path: path.to_string(),
                version: number,
            })?;
        let Some(manifest) = rec.manifest.clone() else {
            return Err(StoreError::NoSuchVersion {
                path: format!("{path} (a deleted or directory version)"),
                version: number,
            });
        };
        let root = folder.root_path();
        let target = match to {
            Some(t) => t.to_path_buf(),
            None => path.to_path(&root),
        };
        let row = self.index_rows_at(folder, path)?;
        if to.is_none() {
            check_unscanned(&target, row.as_ref())?;
        } else if target.exists() {
            return Err(StoreError::BadFolderPath {
                path: target,
                reason: "already exists; choose another --to".into(),
            });
        }
        let tmp_dir = if to.is_none() {
            root.join(crate::scan::TEMP_DIR).join("tmp")
        } else {
            target
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."))
        };
        std::fs::create_dir_all(&tmp_dir).map_err(|e| StoreError::io(&tmp_dir, e))?;
        let tmp = tmp_dir.join(format!(".weft-restore-{}.tmp", std::process::id()));
        let result = (|| -> Result<()> {
            let mut f = std::fs::File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
            let mut missing = 0usize;
            for c in &manifest.chunks {
                let pt = match self.chunk_plaintext(c)? {
                    Some(pt) => Some(pt),
                    None => fetch(&c.id)
                        .and_then(|ct| SealedChunk::open(&c.id, &c.key, c.len, &ct).ok()),
                };
                match pt {
                    Some(pt) => f.write_all(&pt).map_err(|e| StoreError::io(&tmp, e))?,
                    None => missing += 1,
                }
            }
            if missing > 0 {
                return Err(StoreError::ChunksMissing {
                    path: path.to_string(),
                    version: number,
                    missing,
                });
            }
            set_executable(&f, manifest.executable, &tmp)?;
            f.sync_all().map_err(|e| StoreError::io(&tmp, e))?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        if to.is_none() {
            // Last check right before replacing: nothing unscanned is overwritten.
            if let Err(e) = check_unscanned(&target, row.as_ref()) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
            }
        }
        std::fs::rename(&tmp, &target).map_err(|e| StoreError::io(&target, e))?;
        let mut new_version = false;
        if to.is_none() {
            self.record_restored(folder, path, &target, &manifest, rec.version.id)?;
            new_version = true;
        }
        Ok(RestoreReport {
            written_to: target.display().to_string(),
            bytes: manifest.size,
            version: number,
            new_version,
        })
    }

    fn index_rows_at(&self, folder: &FolderRecord, path: &RelPath) -> Result<Option<IndexRow>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(db::INDEX)?;
        t.get(db::key_path(&folder.id, path).as_slice())?
            .map(|v| db::dec("index row", v.value()))
            .transpose()
    }

    /// Records a file just written by restore as a new local version with known chunks.
    fn record_restored(
        &self,
        folder: &FolderRecord,
        path: &RelPath,
        file: &Path,
        restored: &Manifest,
        from: VersionId,
    ) -> Result<()> {
        let meta = std::fs::symlink_metadata(file).map_err(|e| StoreError::io(file, e))?;
        let mtime_ns = meta
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(meta.mtime_nsec());
        let mut m = restored.clone();
        m.mtime_ns = mtime_ns;
        let keys = self.keys(folder);
        let me = self.id.device_id();
        let txn = self.db.begin_write()?;
        let applied = append_local(&txn, &self.id, &folder.id, &keys, now_ms(), |seq| {
            let mut vv = crate::store::local_base_vv(&txn, &folder.id, path, me)?;
            vv.set(me, seq);
            Ok(vec![Op::Put {
                path: path.clone(),
                vv,
                manifest: WireManifest::encode(&m, Some((path, from, restored))),
            }])
        })?;
        let vid = applied
            .versions
            .first()
            .map(|(v, _)| v.id)
            .ok_or_else(|| StoreError::decode("restore", "no version created"))?;
        if let Some(old) = txn
            .open_table(db::INDEX)?
            .get(db::key_path(&folder.id, path).as_slice())?
            .map(|v| db::dec::<IndexRow>("index row", v.value()))
            .transpose()?
        {
            crate::locs::forget_row(&txn, &folder.id, path, &old)?;
        }
        crate::locs::record(&txn, &folder.id, path, &m)?;
        txn.open_table(db::INDEX)?.insert(
            db::key_path(&folder.id, path).as_slice(),
            db::enc(&IndexRow {
                kind: IndexKind::File,
                size: meta.len(),
                mtime_ns,
                inode: meta.ino(),
                dev: meta.dev(),
                executable: m.executable,
                hash: m.hash,
                version: vid,
            })
            .as_slice(),
        )?;
        txn.commit()?;
        Ok(())
    }

    /// The change log of a folder, oldest first.
    pub fn log_items(&self, folder: &FolderRecord) -> Result<Vec<LogItem>> {
        let keys = self.epoch_keys(folder)?;
        let r = self.db.begin_read()?;
        let log = r.open_table(db::LOG)?;
        let devices = r.open_table(db::DEVICES)?;
        let mut names: HashMap<weft_crypto::DeviceId, Option<String>> = HashMap::new();
        let mut out = Vec::new();
        db::scan_prefix(&log, &folder.id.0, |_, v| {
            let e = Entry::decode(v)?;
            let k = keys.get(e.header.epoch).ok_or_else(|| {
                e.reject(format!(
                    "sealed with key epoch {} this device does not hold",
                    e.header.epoch
                ))
            })?;
            let ops = e.open_change(k)?;
            let author = e.header.author;
            let name = match names.get(&author) {
                Some(n) => n.clone(),
                None => {
                    let n = devices
                        .get(author.as_bytes().as_slice())?
                        .and_then(|v| weft_crypto::DeviceCertificate::from_bytes(v.value()).ok())
                        .map(|c| c.body.name);
                    names.insert(author, n.clone());
                    n
                }
            };
            for op in &ops {
                let (path, to) = match op {
                    Op::Move { from, to, .. } => (from.to_string(), Some(to.to_string())),
                    other => (
                        other
                            .paths()
                            .first()
                            .map(|p| p.to_string())
                            .unwrap_or_default(),
                        None,
                    ),
                };
                out.push(LogItem {
                    author: author.to_string(),
                    author_name: name.clone(),
                    seq: e.header.seq,
                    time_ms: e.header.time_ms,
                    op: op.name(),
                    path,
                    to,
                });
            }
            Ok(())
        })?;
        out.sort_by(|a, b| (a.time_ms, &a.author, a.seq).cmp(&(b.time_ms, &b.author, b.seq)));
        Ok(out)
    }

    /// The chunks `folder`'s retained versions reference under a retention of
    /// `retention_days`: every current version's, and those of versions superseded or
    /// deleted less than that long ago. What a relay may not forget yet.
    pub fn retained_chunks(
        &self,
        folder: &weft_crypto::FolderId,
        now: u64,
        retention_days: u32,
    ) -> Result<Vec<ChunkId>> {
        let retention = u64::from(retention_days) * 86_400_000;
        let mut live: HashSet<ChunkId> = HashSet::new();
        let r = self.db.begin_read()?;
        let versions = r.open_table(db::VERSIONS)?;
        db::scan_prefix(&versions, &folder.0, |_, v| {
            let rec: VersionRecord = db::dec("version", v)?;
            let retained = match rec.superseded_ms {
                None => true,
                Some(t) => now.saturating_sub(t) < retention,
            };
            if retained && let Some(m) = rec.manifest {
                live.extend(m.chunks.iter().map(|c| c.id));
            }
            Ok(())
        })?;
        let mut out: Vec<ChunkId> = live.into_iter().collect();
        out.sort();
        Ok(out)
    }

    /// Removes cached chunks that no retained version references, evicts the oldest
    /// packs while the cache is over budget, and compacts packs.
    pub fn gc(&self, now: u64) -> Result<GcReport> {
        let retention = u64::from(self.config.history.retention_days) * 86_400_000;
        let mut report = GcReport::default();
        let mut live: HashSet<ChunkId> = HashSet::new();
        {
            let r = self.db.begin_read()?;
            let versions = r.open_table(db::VERSIONS)?;
            for item in versions.iter()? {
                let (_, v) = item?;
                let rec: VersionRecord = db::dec("version", v.value())?;
                let retained = match rec.superseded_ms {
                    None => true,
                    Some(t) => now.saturating_sub(t) < retention,
                };
                if !retained {
                    report.versions_expired += 1;
                    continue;
                }
                if let Some(m) = rec.manifest {
                    live.extend(m.chunks.iter().map(|c| c.id));
                }
            }
        }
        let packs_before: u64 = self.cache.packs()?.iter().map(|(_, l)| l).sum();
        // Drop dead rows; tally live bytes per pack.
        let mut per_pack: HashMap<u32, Vec<(Vec<u8>, CacheLoc)>> = HashMap::new();
        let folders = self.folders()?;
        let txn = self.db.begin_write()?;
        // Over budget, the oldest packs go first (their rows are dropped here; the
        // packs, left without live chunks, are deleted below).
        self.trim(&txn, &folders)?;
        {
            let mut t = txn.open_table(db::CHUNKS)?;
            let mut dead = Vec::new();
            for item in t.iter()? {
                let (k, v) = item?;
                let key = k.value().to_vec();
                let loc: CacheLoc = db::dec("cache location", v.value())?;
                let id = ChunkId(weft_crypto::Hash(
                    key.as_slice()
                        .try_into()
                        .map_err(|_| StoreError::decode("chunk key", "length"))?,
                ));
                if live.contains(&id) {
                    per_pack.entry(loc.pack).or_default().push((key, loc));
                } else {
                    dead.push(key);
                }
            }
            for k in dead {
                t.remove(k.as_slice())?;
                report.chunks_removed += 1;
            }
        }
        // Rewrite packs that are mostly dead.
        let mut writer = self.cache.writer()?;
        let mut obsolete = Vec::new();
        for (n, size) in self.cache.packs()? {
            let live_chunks = per_pack.get(&n).map(Vec::as_slice).unwrap_or(&[]);
            let live_bytes: u64 = live_chunks.iter().map(|(_, l)| u64::from(l.len)).sum();
            if live_chunks.is_empty() {
                obsolete.push(n);
            } else if live_bytes * 2 < size {
                let mut t = txn.open_table(db::CHUNKS)?;
                for (k, loc) in live_chunks {
                    let ct = self.cache.read(loc)?;
                    let new = writer.append(&ct)?;
                    t.insert(k.as_slice(), db::enc(&new).as_slice())?;
                }
                obsolete.push(n);
                report.packs_rewritten += 1;
            }
        }
        writer.sync()?;
        txn.commit()?;
        // Only after the new locations are durable do the old packs go.
        for n in obsolete {
            self.cache.remove(n)?;
            report.packs_removed += 1;
        }
        let packs_after: u64 = self.cache.packs()?.iter().map(|(_, l)| l).sum();
        report.bytes_freed = packs_before.saturating_sub(packs_after);
        report.packs_removed -= report.packs_rewritten.min(report.packs_removed);
        Ok(report)
    }
}

/// Fails if the file at `target` differs from what the index says (an unscanned change).
fn check_unscanned(target: &Path, row: Option<&IndexRow>) -> Result<()> {
    match (std::fs::symlink_metadata(target), row) {
        (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        (Err(e), _) => Err(StoreError::io(target, e)),
        (Ok(_), None) => Err(StoreError::UnscannedChanges(target.to_path_buf())),
        (Ok(m), Some(row)) => {
            let mtime_ns = m
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(m.mtime_nsec());
            if row.kind == IndexKind::File
                && m.is_file()
                && m.len() == row.size
                && mtime_ns == row.mtime_ns
                && m.ino() == row.inode
            {
                Ok(())
            } else {
                Err(StoreError::UnscannedChanges(target.to_path_buf()))
            }
        }
    }
}

fn set_executable(f: &std::fs::File, exec: bool, p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = f.metadata().map_err(|e| StoreError::io(p, e))?;
    let mut mode = meta.permissions().mode();
    if exec {
        mode |= (mode & 0o444) >> 2;
    } else {
        mode &= !0o111;
    }
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| StoreError::io(p, e))
}
