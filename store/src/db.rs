//! The redb schema: every table, its key layout and value encoding.
//!
//! Table names carry a version (`"log-1"`); a layout change gets a new name and a
//! numbered migration in [`open`]. Composite keys are byte strings built by the
//! `key_*` functions below so that prefix ranges select one folder, one path, or one
//! author. Values are postcard-encoded structs from this module; enums in them are
//! only ever appended to.
use crate::error::{Result, StoreError};
use crate::model::{Content, Manifest, RelPath, Version, VersionId, VersionVector};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;
use weft_crypto::{ChunkId, DeviceId, FolderId, FolderSecret, Hash, PersonId};

/// Current schema version, kept in `meta-1` under `"schema"`.
pub const SCHEMA_VERSION: u32 = 8;

/// `name → value`: schema version and similar.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta-1");
/// `folder id (16) → FolderRecord`.
pub const FOLDERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("folders-1");
/// `folder (16) ‖ path → IndexRow`: what is on disk and which version it is.
pub const INDEX: TableDefinition<&[u8], &[u8]> = TableDefinition::new("index-1");
/// `folder (16) ‖ author (32) ‖ seq (u64 BE) → encoded log entry`.
pub const LOG: TableDefinition<&[u8], &[u8]> = TableDefinition::new("log-1");
/// `folder (16) ‖ author (32) → ChainTip`: the last entry accepted from each author.
pub const TIPS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tips-1");
/// `folder (16) ‖ path → Vec<Version>`: the path's current heads (maximal versions).
pub const HEADS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("heads-1");
/// `folder (16) ‖ path ‖ 0 ‖ author (32) ‖ seq (u64 BE) → VersionRecord`: history.
pub const VERSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("versions-1");
/// `chunk id (32) → CacheLoc`: where a chunk's ciphertext sits in the local pack files.
pub const CHUNKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("chunks-1");
/// `device id (32) → DeviceCertificate bytes`: certificates of known devices.
pub const DEVICES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("devices-1");
/// `device id (32) → Vec<String>`: the last addresses (multiaddrs) a device was seen at.
pub const PEER_ADDRS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("peer-addrs-1");
/// `chunk id (32) → FileLoc`: where a chunk of a current file can be read.
pub const CHUNK_LOCS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("chunk-locs-1");
/// `relay multiaddr (with /p2p/<id>) → ()`: the relays this device uses.
pub const RELAYS: TableDefinition<&str, ()> = TableDefinition::new("relays-1");
/// `"relay peer id/folder hex/author" → sequence`: the furthest a relay has shown it
/// holds each author's chain (stored, listed or served): less later is a rollback.
pub const RELAY_MARKS: TableDefinition<&str, u64> = TableDefinition::new("relay-marks-1");
/// `person id (32) → Contact`: persons this one has verified (by fingerprint) and named.
pub const CONTACTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("contacts-1");
/// `folder (16) ‖ seq (u64 BE) → membership entry`: a shared folder's membership chain.
pub const MEMBERSHIP: TableDefinition<&[u8], &[u8]> = TableDefinition::new("membership-1");
/// `folder (16) ‖ epoch (u32 BE) → FolderSecret`: every epoch's secret held here.
pub const SECRETS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("folder-secrets-1");
/// `folder (16) → Offer`: folders shared with this person not synced here.
pub const OFFERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("offers-1");
/// `link token (base64url) → LocalLink`: share links this device created.
pub const LINKS: TableDefinition<&str, &[u8]> = TableDefinition::new("links-1");

/// A registered folder.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FolderRecord {
    /// Its id.
    pub id: FolderId,
    /// A human name, unique on this device.
    pub name: String,
    /// The root directory on this device, as bytes.
    pub root: Vec<u8>,
    /// The current folder secret.
    pub secret: FolderSecret,
    /// The person who created it.
    pub owner: PersonId,
    /// When it was added, Unix ms.
    pub created_ms: u64,
    /// When it was last scanned, Unix ms.
    pub last_scan_ms: Option<u64>,
}

impl FolderRecord {
    /// The root as a path.
    #[cfg(unix)]
    pub fn root_path(&self) -> std::path::PathBuf {
        use std::os::unix::ffi::OsStrExt;
        std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&self.root))
    }
}

/// What the index knows about one path on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRow {
    /// File or directory.
    pub kind: IndexKind,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Modification time, Unix ns.
    pub mtime_ns: i64,
    /// Inode number (to skip unchanged files and to recognise moves without reading).
    pub inode: u64,
    /// Device number of the filesystem.
    pub dev: u64,
    /// The owner-executable bit.
    pub executable: bool,
    /// The content hash of the version on disk (zero for directories).
    pub hash: Hash,
    /// The version this row corresponds to.
    pub version: VersionId,
}

/// The kind of an indexed path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IndexKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// The last accepted entry of one author in one folder.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChainTip {
    /// Its sequence number.
    pub seq: u64,
    /// Its hash (the next entry's `prev`).
    pub hash: Hash,
}

/// One version in a path's history.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VersionRecord {
    /// The version itself (path, id, vv, content).
    pub version: Version,
    /// The full chunk list for a file version.
    pub manifest: Option<Manifest>,
    /// When the entry was written, Unix ms (from the entry header).
    pub time_ms: u64,
    /// When a later version superseded it on this device, Unix ms; `None` while current.
    pub superseded_ms: Option<u64>,
}

/// Where a cached chunk's ciphertext is.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CacheLoc {
    /// Pack file number.
    pub pack: u32,
    /// Byte offset in the pack.
    pub offset: u64,
    /// Ciphertext length.
    pub len: u32,
}

/// `folder ‖ path`.
pub fn key_path(folder: &FolderId, path: &RelPath) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + path.as_bytes().len());
    k.extend_from_slice(&folder.0);
    k.extend_from_slice(path.as_bytes());
    k
}

/// `folder ‖ author ‖ seq`.
pub fn key_entry(folder: &FolderId, author: &DeviceId, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(56);
    k.extend_from_slice(&folder.0);
    k.extend_from_slice(author.as_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `folder ‖ author`.
pub fn key_author(folder: &FolderId, author: &DeviceId) -> Vec<u8> {
    let mut k = Vec::with_capacity(48);
    k.extend_from_slice(&folder.0);
    k.extend_from_slice(author.as_bytes());
    k
}

/// `folder ‖ path ‖ 0 ‖ author ‖ seq`.
pub fn key_version(folder: &FolderId, path: &RelPath, id: &VersionId) -> Vec<u8> {
    let mut k = key_path_versions(folder, path);
    k.extend_from_slice(id.author.as_bytes());
    k.extend_from_slice(&id.seq.to_be_bytes());
    k
}

/// The prefix of every version key of one path: `folder ‖ path ‖ 0`.
pub fn key_path_versions(folder: &FolderId, path: &RelPath) -> Vec<u8> {
    let mut k = key_path(folder, path);
    k.push(0);
    k
}

/// The half-open key range `[prefix, prefix+1)` of all keys starting with `prefix`.
pub fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    let start = prefix.to_vec();
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (start, Some(end));
        }
    }
    (start, None)
}

/// Iterates `(key, value)` over every key of `table` starting with `prefix`.
pub fn scan_prefix<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    prefix: &[u8],
    mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
) -> Result<()> {
    let (start, end) = prefix_range(prefix);
    let iter = match &end {
        Some(e) => table.range::<&[u8]>(start.as_slice()..e.as_slice())?,
        None => table.range::<&[u8]>(start.as_slice()..)?,
    };
    for item in iter {
        let (k, v) = item?;
        f(k.value(), v.value())?;
    }
    Ok(())
}

/// postcard-encodes a value for a table.
pub fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    // postcard only fails for types serde cannot describe (none here) or a full buffer
    // (it grows a Vec): treat it as impossible but not as a panic.
    postcard::to_stdvec(v).unwrap_or_default()
}

/// postcard-decodes a table value, naming what it was on failure.
pub fn dec<'a, T: Deserialize<'a>>(what: &'static str, b: &'a [u8]) -> Result<T> {
    postcard::from_bytes(b).map_err(|e| StoreError::decode(what, e))
}

/// The database's page cache. redb's default (1 GiB) lets a node's memory grow with
/// its folders' index and log; this keeps what a sync of 10,000 files touches.
const CACHE_BYTES: usize = 16 << 20;

/// Opens (creating if needed) the database and runs migrations.
pub fn open(path: &Path) -> Result<Database> {
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)?;
    // Up to date: open without writing (so reading works on a full disk).
    {
        let r = db.begin_read()?;
        if let Ok(meta) = r.open_table(META)
            && let Some(v) = meta.get("schema")?
            && v.value() == SCHEMA_VERSION.to_le_bytes().as_slice()
        {
            drop(meta);
            drop(r);
            return Ok(db);
        }
    }
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        let current = match meta.get("schema")? {
            Some(v) => {
                let b: [u8; 4] = v
                    .value()
                    .try_into()
                    .map_err(|_| StoreError::decode("schema version", "length"))?;
                u32::from_le_bytes(b)
            }
            None => 0,
        };
        if current > SCHEMA_VERSION {
            return Err(StoreError::decode(
                "database",
                format!(
                    "schema {current} is newer than this weft ({SCHEMA_VERSION}): upgrade weft"
                ),
            ));
        }
        // Migration 0 → 1: create every table.
        if current < 1 {
            txn.open_table(FOLDERS)?;
            txn.open_table(INDEX)?;
            txn.open_table(LOG)?;
            txn.open_table(TIPS)?;
            txn.open_table(HEADS)?;
            txn.open_table(VERSIONS)?;
            txn.open_table(CHUNKS)?;
            txn.open_table(DEVICES)?;
        }
        // Migration 1 → 2: peer addresses.
        if current < 2 {
            txn.open_table(PEER_ADDRS)?;
        }
        // Migration 2 → 3: chunk locations in current files.
        if current < 3 {
            txn.open_table(CHUNK_LOCS)?;
        }
        // Migration 3 → 4: relays.
        if current < 4 {
            txn.open_table(RELAYS)?;
        }
        // Migration 4 → 5: relays' high-water marks.
        if current < 5 {
            txn.open_table(RELAY_MARKS)?;
        }
        // Migration 5 → 6: contacts.
        if current < 6 {
            txn.open_table(CONTACTS)?;
        }
        // Migration 6 → 7: sharing (membership chains, secrets by epoch, offers).
        if current < 7 {
            txn.open_table(MEMBERSHIP)?;
            txn.open_table(SECRETS)?;
            txn.open_table(OFFERS)?;
        }
        // Migration 7 → 8: share links.
        if current < 8 {
            txn.open_table(LINKS)?;
        }
        meta.insert("schema", SCHEMA_VERSION.to_le_bytes().as_slice())?;
    }
    txn.commit()?;
    Ok(db)
}

/// Reads the live heads of a path (empty if none).
pub fn read_heads<T: ReadableTable<&'static [u8], &'static [u8]>>(
    heads: &T,
    folder: &FolderId,
    path: &RelPath,
) -> Result<Vec<Version>> {
    match heads.get(key_path(folder, path).as_slice())? {
        Some(v) => dec("heads", v.value()),
        None => Ok(Vec::new()),
    }
}

/// The join of all heads' version vectors: what a new local version of `path` must dominate.
pub fn heads_vv(heads: &[Version]) -> VersionVector {
    let mut vv = VersionVector::new();
    for h in heads {
        vv.join(&h.vv);
    }
    vv
}

/// True if a content is a live file with this hash.
pub fn content_hash(c: &Content) -> Option<Hash> {
    match c {
        Content::File { hash, .. } => Some(*hash),
        _ => None,
    }
}

/// The `chunks` table key of a chunk id.
pub fn chunk_key(id: &ChunkId) -> [u8; 32] {
    id.0.0
}

/// Opens a read transaction.
pub fn read(db: &Database) -> Result<redb::ReadTransaction> {
    Ok(db.begin_read()?)
}
