//! [`Store`]: one device's state — identity, folders, log, index, history, chunk cache —
//! and the operations on it that need no network.
use crate::cache::ChunkCache;
use crate::db::{self, ChainTip, FolderRecord, IndexRow, VersionRecord};
use crate::error::{Result, StoreError};
use crate::home::{Config, Home, Identity};
use crate::log::{Entry, EntryHeader, EntryKind, Op, check_chain};
use crate::merge::{self, Applied};
use crate::model::{Manifest, RelPath, Version, VersionId};
use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};
use std::path::{Path, PathBuf};
use weft_crypto::{DeviceCertificate, DeviceId, FolderId, FolderKeys, FolderSecret, Hash};

/// Current time, Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One device's store.
pub struct Store {
    pub(crate) home: Home,
    pub(crate) db: Database,
    pub(crate) cache: ChunkCache,
    pub(crate) id: Identity,
    pub(crate) config: Config,
    pub(crate) open_files: crate::locs::OpenFiles,
}

/// A folder with its counts, for listings.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FolderInfo {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its root on this device.
    pub path: String,
    /// Files in the index.
    pub files: u64,
    /// Bytes in the index.
    pub bytes: u64,
    /// Last scan, Unix ms.
    pub last_scan_ms: Option<u64>,
}

impl Store {
    /// Opens the store of an initialized home.
    pub fn open(home: &Home) -> Result<Store> {
        let id = home.load_identity()?;
        let config = home.load_config()?;
        let db = db::open(&home.db_path())?;
        let cache = ChunkCache::open(&home.cache_dir())?;
        let store = Store {
            home: home.clone(),
            db,
            cache,
            id,
            config,
            open_files: Default::default(),
        };
        store.remember_device(&store.id.cert.clone())?;
        Ok(store)
    }

    /// The identity.
    pub fn identity(&self) -> &Identity {
        &self.id
    }

    /// The config in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The home directory.
    pub fn home(&self) -> &Home {
        &self.home
    }

    /// The database (for crates building on the store).
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// The chunk cache.
    pub fn cache(&self) -> &ChunkCache {
        &self.cache
    }

    /// Records a verified device certificate.
    pub fn remember_device(&self, cert: &DeviceCertificate) -> Result<()> {
        cert.verify(None)?;
        if self.device_cert(&cert.body.device)?.is_some() {
            return Ok(()); // known: no write (read-only commands work on a full disk)
        }
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(db::DEVICES)?;
            let k = cert.body.device.as_bytes().to_vec();
            if t.get(k.as_slice())?.is_none() {
                t.insert(k.as_slice(), cert.to_bytes().as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The certificate of a known device.
    pub fn device_cert(&self, device: &DeviceId) -> Result<Option<DeviceCertificate>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(db::DEVICES)?;
        match t.get(device.as_bytes().as_slice())? {
            Some(v) => Ok(Some(DeviceCertificate::from_bytes(v.value())?)),
            None => Ok(None),
        }
    }

    /// Registers `path` as a new folder. Refuses a path that is not a directory, or that
    /// is inside, or contains, a folder already registered.
    pub fn add_folder(&self, path: &Path, name: Option<&str>) -> Result<FolderRecord> {
        let bad = |reason: &str| StoreError::BadFolderPath {
            path: path.to_path_buf(),
            reason: reason.to_owned(),
        };
        let meta = std::fs::metadata(path).map_err(|e| StoreError::BadFolderPath {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if !meta.is_dir() {
            return Err(bad("not a directory"));
        }
        let root = std::fs::canonicalize(path).map_err(|e| StoreError::io(path, e))?;
        let home = std::fs::canonicalize(self.home.root())
            .unwrap_or_else(|_| self.home.root().to_path_buf());
        if root.starts_with(&home) || home.starts_with(&root) {
            return Err(bad("it overlaps weft's own state directory"));
        }
        let name = match name {
            Some(n) => n.to_owned(),
            None => root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "root".into()),
        };
        if name.is_empty() {
            return Err(bad("empty folder name"));
        }
        for f in self.folders()? {
            let other = f.root_path();
            if other == root {
                return Err(bad(&format!("already added as folder {:?}", f.name)));
            }
            if root.starts_with(&other) {
                return Err(bad(&format!(
                    "it is inside folder {:?} ({})",
                    f.name,
                    other.display()
                )));
            }
            if other.starts_with(&root) {
                return Err(bad(&format!(
                    "it contains folder {:?} ({})",
                    f.name,
                    other.display()
                )));
            }
            if f.name == name {
                return Err(bad(&format!(
                    "a folder is already named {name:?}; pass --name"
                )));
            }
        }
        use std::os::unix::ffi::OsStrExt;
        let rec = FolderRecord {
            id: FolderId::generate(),
            name,
            root: root.as_os_str().as_bytes().to_vec(),
            secret: FolderSecret::generate(),
            owner: self.id.person_id(),
            created_ms: now_ms(),
            last_scan_ms: None,
        };
        crate::scan::write_marker(&root, &rec.id)?;
        let txn = self.db.begin_write()?;
        txn.open_table(db::FOLDERS)?
            .insert(rec.id.0.as_slice(), db::enc(&rec).as_slice())?;
        txn.commit()?;
        Ok(rec)
    }

    /// Every registered folder.
    pub fn folders(&self) -> Result<Vec<FolderRecord>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(db::FOLDERS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (_, v) = item?;
            out.push(db::dec::<FolderRecord>("folder", v.value())?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// One folder by id.
    pub fn folder(&self, id: &FolderId) -> Result<FolderRecord> {
        let r = self.db.begin_read()?;
        let t = r.open_table(db::FOLDERS)?;
        match t.get(id.0.as_slice())? {
            Some(v) => db::dec("folder", v.value()),
            None => Err(StoreError::NoSuchFolder(id.to_string())),
        }
    }

    /// Finds a folder by name, id or path.
    pub fn find_folder(&self, arg: &str) -> Result<FolderRecord> {
        let all = self.folders()?;
        let canon = std::fs::canonicalize(arg).ok();
        let hits: Vec<_> = all
            .into_iter()
            .filter(|f| {
                f.name == arg
                    || f.id.to_string() == arg
                    || canon.as_deref() == Some(f.root_path().as_path())
            })
            .collect();
        match hits.len() {
            0 => Err(StoreError::NoSuchFolder(arg.to_owned())),
            1 => Ok(hits
                .into_iter()
                .next()
                .ok_or_else(|| StoreError::NoSuchFolder(arg.to_owned()))?),
            _ => Err(StoreError::AmbiguousFolder(arg.to_owned())),
        }
    }

    /// The folder containing a path on disk, and the path inside it. The path's parent
    /// must exist (the file itself may not, e.g. after a delete).
    pub fn locate(&self, path: &Path) -> Result<(FolderRecord, RelPath)> {
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| StoreError::io(".", e))?
                .join(path)
        };
        let name = abs
            .file_name()
            .ok_or_else(|| StoreError::NotInFolder(path.to_path_buf()))?;
        let parent = abs
            .parent()
            .ok_or_else(|| StoreError::NotInFolder(path.to_path_buf()))?;
        let parent = std::fs::canonicalize(parent).map_err(|e| StoreError::io(parent, e))?;
        let full = parent.join(name);
        for f in self.folders()? {
            let root = f.root_path();
            if full.starts_with(&root) && full != root {
                let rel = RelPath::from_path(&root, &full)?;
                return Ok((f, rel));
            }
        }
        Err(StoreError::NotInFolder(path.to_path_buf()))
    }

    /// A folder's current keys.
    pub fn keys(&self, f: &FolderRecord) -> FolderKeys {
        f.secret.keys(&f.id)
    }

    /// Listing info for every folder.
    pub fn folder_infos(&self) -> Result<Vec<FolderInfo>> {
        let r = self.db.begin_read()?;
        let index = r.open_table(db::INDEX)?;
        let mut out = Vec::new();
        for f in self.folders()? {
            let (mut files, mut bytes) = (0u64, 0u64);
            db::scan_prefix(&index, &f.id.0, |_, v| {
                let row: IndexRow = db::dec("index row", v)?;
                if row.kind == db::IndexKind::File {
                    files += 1;
                    bytes += row.size;
                }
                Ok(())
            })?;
            out.push(FolderInfo {
                id: f.id.to_string(),
                name: f.name.clone(),
                path: f.root_path().display().to_string(),
                files,
                bytes,
                last_scan_ms: f.last_scan_ms,
            });
        }
        Ok(out)
    }

    /// The manifest of a stored version.
    pub fn manifest(&self, folder: &FolderId, path: &RelPath, id: &VersionId) -> Result<Manifest> {
        let r = self.db.begin_read()?;
        let t = r.open_table(db::VERSIONS)?;
        version_manifest(&t, folder, path, id)
    }
}

/// Looks up a version's manifest in a versions table.
pub(crate) fn version_manifest<T: ReadableTable<&'static [u8], &'static [u8]>>(
    t: &T,
    folder: &FolderId,
    path: &RelPath,
    id: &VersionId,
) -> Result<Manifest> {
    let missing = || {
        StoreError::decode(
            "manifest delta",
            format!("base version of {path} is unknown"),
        )
    };
    let v = t
        .get(db::key_version(folder, path, id).as_slice())?
        .ok_or_else(missing)?;
    let rec: VersionRecord = db::dec("version", v.value())?;
    rec.manifest.ok_or_else(missing)
}

/// The causal base of a new local version of `path`: what this device's disk holds.
///
/// A local edit supersedes the version the file on disk came from (the index row's),
/// not every head the store knows: a remote version accepted but not yet written here
/// was never seen by the person editing, so the edit must stay concurrent with it and
/// become a conflict, not silently replace it. A path absent here has seen the
/// tombstones among its heads (absence is what they say). This device's own versions
/// are always part of the base.
pub(crate) fn local_base_vv(
    txn: &WriteTransaction,
    folder: &FolderId,
    path: &RelPath,
    me: DeviceId,
) -> Result<crate::model::VersionVector> {
    let row: Option<IndexRow> = txn
        .open_table(db::INDEX)?
        .get(db::key_path(folder, path).as_slice())?
        .map(|v| db::dec("index row", v.value()))
        .transpose()?;
    let heads = db::read_heads(&txn.open_table(db::HEADS)?, folder, path)?;
    // This device's own versions are known to it, whatever its disk holds.
    let mut vv = db::heads_vv(
        &heads
            .iter()
            .filter(|h| h.id.author == me)
            .cloned()
            .collect::<Vec<_>>(),
    );
    match row {
        Some(row) => {
            let rec: Option<VersionRecord> = txn
                .open_table(db::VERSIONS)?
                .get(db::key_version(folder, path, &row.version).as_slice())?
                .map(|v| db::dec("version", v.value()))
                .transpose()?;
            match rec {
                Some(rec) => vv.join(&rec.version.vv),
                None => vv.join(&db::heads_vv(&heads)),
            }
        }
        None => {
            for h in heads.iter().filter(|h| !h.content.is_live()) {
                vv.join(&h.vv);
            }
        }
    }
    Ok(vv)
}

/// What appending or accepting one entry did.
#[derive(Debug)]
pub struct EntryApplied {
    /// The entry's hash.
    pub hash: Hash,
    /// Its encoded length.
    pub len: usize,
    /// The versions it created, with what the merge did with each.
    pub versions: Vec<(Version, Applied)>,
}

/// The sequence number this device's next entry in `folder` gets.
pub(crate) fn next_seq(txn: &WriteTransaction, folder: &FolderId, me: &DeviceId) -> Result<u64> {
    Ok(read_tip(txn, folder, me)?.map(|t| t.seq + 1).unwrap_or(1))
}

/// Appends a new local entry to `folder`'s log inside `txn`. `make_ops` receives the
/// entry's sequence number (every new version's vector carries it) to build the
/// operations, which must name distinct paths.
pub(crate) fn append_local(
    txn: &WriteTransaction,
    id: &Identity,
    folder: &FolderId,
    keys: &FolderKeys,
    now: u64,
    make_ops: impl FnOnce(u64) -> Result<Vec<Op>>,
) -> Result<EntryApplied> {
    let me = id.device_id();
    let tip = read_tip(txn, folder, &me)?;
    let seq = tip.map(|t| t.seq + 1).unwrap_or(1);
    let ops = make_ops(seq)?;
    let header = EntryHeader {
        format: crate::log::FORMAT,
        folder: *folder,
        author: me,
        seq,
        prev: tip.map(|t| t.hash).unwrap_or(Hash::ZERO),
        kind: EntryKind::Change,
        epoch: keys.epoch(),
        time_ms: now,
    };
    let entry = Entry::new_change(header, &ops, keys, &id.device);
    store_entry(txn, &entry, &ops, now)
}

/// Verifies a received entry (signature, certified author, chain, body) and applies it.
pub fn accept_entry(
    txn: &WriteTransaction,
    entry: &Entry,
    keys: &FolderKeys,
    now: u64,
) -> Result<EntryApplied> {
    entry.verify_signature()?;
    {
        let devices = txn.open_table(db::DEVICES)?;
        if devices
            .get(entry.header.author.as_bytes().as_slice())?
            .is_none()
        {
            return Err(entry.reject("author device is not certified".into()));
        }
    }
    let tip = read_tip(txn, &entry.header.folder, &entry.header.author)?;
    check_chain(entry, tip.map(|t| (t.seq, t.hash)))?;
    let ops = entry.open_change(keys)?;
    store_entry(txn, entry, &ops, now)
}

fn read_tip(
    txn: &WriteTransaction,
    folder: &FolderId,
    author: &DeviceId,
) -> Result<Option<ChainTip>> {
    let tips = txn.open_table(db::TIPS)?;
    let v = tips.get(db::key_author(folder, author).as_slice())?;
    v.map(|v| db::dec("chain tip", v.value())).transpose()
}

/// Stores an entry and merges the versions its operations create.
fn store_entry(
    txn: &WriteTransaction,
    entry: &Entry,
    ops: &[Op],
    now: u64,
) -> Result<EntryApplied> {
    let folder = entry.header.folder;
    let vid = entry.version_id();
    let encoded = entry.encode();
    let hash = Hash::of(&encoded);
    let mut versions_t = txn.open_table(db::VERSIONS)?;
    let mut created = Vec::new();
    for op in ops {
        created.extend(op.versions(vid, |p, base| {
            version_manifest(&versions_t, &folder, p, base)
        })?);
    }
    let mut heads_t = txn.open_table(db::HEADS)?;
    let mut out = Vec::new();
    for (v, manifest) in created {
        let mut heads = db::read_heads(&heads_t, &folder, &v.path)?;
        let before: Vec<VersionId> = heads.iter().map(|h| h.id).collect();
        let applied = merge::apply_to_heads(&mut heads, v.clone());
        let after: Vec<VersionId> = heads.iter().map(|h| h.id).collect();
        // Versions that left the heads were superseded now; a version that never
        // became a head was superseded on arrival.
        for gone in before.iter().filter(|b| !after.contains(b)) {
            mark_superseded(&mut versions_t, &folder, &v.path, gone, now)?;
        }
        let rec = VersionRecord {
            version: v.clone(),
            manifest,
            time_ms: entry.header.time_ms,
            superseded_ms: (!after.contains(&vid)).then_some(now),
        };
        versions_t.insert(
            db::key_version(&folder, &v.path, &vid).as_slice(),
            db::enc(&rec).as_slice(),
        )?;
        heads_t.insert(
            db::key_path(&folder, &v.path).as_slice(),
            db::enc(&heads).as_slice(),
        )?;
        out.push((v, applied));
    }
    txn.open_table(db::LOG)?.insert(
        db::key_entry(&folder, &entry.header.author, entry.header.seq).as_slice(),
        encoded.as_slice(),
    )?;
    txn.open_table(db::TIPS)?.insert(
        db::key_author(&folder, &entry.header.author).as_slice(),
        db::enc(&ChainTip {
            seq: entry.header.seq,
            hash,
        })
        .as_slice(),
    )?;
    Ok(EntryApplied {
        hash,
        len: encoded.len(),
        versions: out,
    })
}

fn mark_superseded(
    t: &mut redb::Table<&'static [u8], &'static [u8]>,
    folder: &FolderId,
    path: &RelPath,
    id: &VersionId,
    now: u64,
) -> Result<()> {
    let k = db::key_version(folder, path, id);
    let rec = match t.get(k.as_slice())? {
        Some(v) => Some(db::dec::<VersionRecord>("version", v.value())?),
        None => None,
    };
    if let Some(mut rec) = rec
        && rec.superseded_ms.is_none()
    {
        rec.superseded_ms = Some(now);
        t.insert(k.as_slice(), db::enc(&rec).as_slice())?;
    }
    Ok(())
}

/// Resolves a home directory argument: explicit, `$WEFT_HOME` (handled by the CLI), or
/// the platform default.
pub fn resolve_home(arg: Option<PathBuf>) -> Result<Home> {
    match arg.or_else(Home::default_root) {
        Some(p) => Ok(Home::new(p)),
        None => Err(StoreError::decode(
            "home",
            "no home directory: pass --home or set WEFT_HOME",
        )),
    }
}
