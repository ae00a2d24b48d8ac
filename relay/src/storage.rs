//! The relay's durable storage: signed log entries and ciphertext chunks of the
//! folders whose owners enabled this relay, and nothing else.
//!
//! Goals: every acknowledged write is durable (blob fsynced and renamed into place,
//! then the redb commit); everything is verified before it is stored (an entry's
//! format, its author's certificate from a registered person, its signature, its place
//! in the author's hash chain; a chunk's bytes against its id), and a refused upload
//! changes nothing; per-person quotas; the relay never holds a key, so it stores only
//! what it can check without one.
//!
//! Layout under the data directory: `relay.redb` (accounts, devices, folders and
//! members, entries, chain tips, chunk records, usage) and `blobs/<2 hex>/<chunk id>`
//! (one file per chunk, ≤ 256 KiB + 16 bytes).
//!
//! Membership: a folder is claimed by the person whose device first stores something
//! in it, who becomes its owner. Sharing (a later issue) will add members with roles;
//! only owners and editors may write, any member's devices may read.
//!
//! Non-goals here: networking (the server in `server.rs` calls this), retention of old
//! versions (the relay cannot read manifests; devices will have to tell it what their
//! retained versions reference).
//!
//! # How it holds together
//!
//! - **All or nothing.** An upload is checked completely (sizes, decoding, signatures,
//!   chunk ids; then, inside one write transaction, rights, chains and quota) before
//!   anything is recorded, and recorded by one commit. A refusal drops the transaction,
//!   so the database is as before. Blobs are written before that commit: a refusal or a
//!   crash after a blob is renamed into place leaves a file no record names, which
//!   [`RelayStore::gc`] removes. Records never name a missing blob.
//! - **gc never races an upload.** Uploads hold a shared lock from their first blob
//!   write to their commit; `gc` takes it exclusively, so it never removes a blob that
//!   an upload has written but not yet recorded.
//! - **Nothing from disk or the network is trusted to be well formed.** Every key and
//!   value read back is length-checked and decoded with an error, never an `unwrap`
//!   (a damaged database must give an error, not bring the relay down); certificates
//!   are re-verified when read; a blob is read only up to its recorded length (at most
//!   [`MAX_BLOB_LEN`]) and checked against its id before it is served.
//! - **Bounded.** Every call has a count and byte limit (the `MAX_*` constants), checked
//!   before any work.
//!
//! # Tables
//!
//! Keys are fixed-width byte strings so that a prefix selects one folder, author,
//! person or chunk; integers are little-endian in values and big-endian in keys (so
//! sequence numbers sort). Names carry a version.
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta-1` | `"schema"` | schema version (u32) |
//! | `devices-1` | device (32) | the device's certificate, canonical encoding |
//! | `persons-1` | person (32) | number of registered devices (u64) |
//! | `folders-1` | folder (16) | [`FolderRecord`]: owner, entry and chunk counts and bytes |
//! | `members-1` | folder (16) ‖ person (32) | role (1 byte) |
//! | `person-folders-1` | person (32) ‖ folder (16) | role (1 byte), the same rows by person |
//! | `usage-1` | person (32) | bytes charged to the person (u64) |
//! | `log-1` | folder (16) ‖ author (32) ‖ seq (u64 BE) | encoded entry |
//! | `tips-1` | folder (16) ‖ author (32) | seq (u64) ‖ entry hash (32) |
//! | `blobs-1` | chunk (32) | ciphertext length (u64): a blob file exists |
//! | `folder-chunks-1` | folder (16) ‖ chunk (32) | empty: the folder stores the chunk |
//! | `chunk-folders-1` | chunk (32) ‖ folder (16) | empty: the same rows by chunk |
//! | `links-1` | token (16) | a share link (see `links.rs`): owner, folder, limits, sealed record |
//! | `link-chunks-1` | token (16) ‖ chunk (32) | empty: the chunks a link may read |
//! | `person-links-1` | person (32) ‖ token (16) | empty: a person's links (bounded count) |
//!
//! That is all the relay keeps: folder ids, device and person ids with their
//! certificates, the entries as uploaded (clear headers, sealed bodies), chunk sizes and
//! which folder holds which chunk. One blob file serves every folder that stores the
//! same ciphertext.
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use weft_crypto::{ChunkId, DeviceCertificate, DeviceId, FolderId, Hash, PersonId, PublicKey};
use weft_store::log::{Entry, MAX_ENTRY_LEN, check_chain};
use weft_store::members::{Membership, MembershipEntry, Role};

/// The largest blob: the chunker's largest chunk (4 MiB, of a file over 4 GiB) plus its
/// 16-byte tag.
pub const MAX_BLOB_LEN: usize = weft_store::chunker::MAX_CHUNK + weft_crypto::chunk::CHUNK_OVERHEAD;
/// Most chunk ids one [`RelayStore::missing_chunks`] call (or tips one
/// [`RelayStore::entries_since`] call) may name.
pub const MAX_IDS: usize = 4096;
/// Most chunks one [`RelayStore::put_chunks`] call may carry: what devices batch
/// their uploads by.
pub const MAX_PUT_CHUNKS: usize = weft_node::protocol::MAX_PUT_CHUNKS;
/// Most ciphertext bytes one [`RelayStore::put_chunks`] call may carry.
pub const MAX_PUT_CHUNK_BYTES: usize = 8 << 20;
/// Most entries one [`RelayStore::put_entries`] call may carry: what one answer of a
/// device's [`weft_store::Store::entries_since`] holds at most.
pub const MAX_PUT_ENTRIES: usize = weft_store::sync::MAX_ENTRIES_COUNT;
/// Most bytes of entries one [`RelayStore::put_entries`] call may carry (one entry is
/// at most [`MAX_ENTRY_LEN`]).
pub const MAX_PUT_ENTRY_BYTES: usize = 12 << 20;
/// The most `max_bytes` [`RelayStore::entries_since`] honours (a larger value is
/// lowered to this).
pub const MAX_ENTRIES_SINCE_BYTES: usize = 8 << 20;
/// The largest certificate [`RelayStore::register`] reads.
const MAX_CERT_LEN: usize = 4096;

const DB_FILE: &str = "relay.redb";
const BLOBS_DIR: &str = "blobs";
/// Temporary blob files, in the blobs directory itself (same filesystem as their
/// final place, so the rename is atomic).
const TMP_PREFIX: &str = "tmp-";
const SCHEMA_VERSION: u32 = 1;

/// A member's role byte: the owner (claimed the folder).
const ROLE_OWNER: u8 = 1;
/// An editor (added by sharing): writes and reads. Any other role byte (3 = viewer)
/// reads only.
const ROLE_EDITOR: u8 = 2;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta-1");
pub(crate) const DEVICES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("devices-1");
const PERSONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("persons-1");
const FOLDERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("folders-1");
pub(crate) const MEMBERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("members-1");
const PERSON_FOLDERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("person-folders-1");
const USAGE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("usage-1");
const LOG: TableDefinition<&[u8], &[u8]> = TableDefinition::new("log-1");
const TIPS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tips-1");
pub(crate) const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs-1");
pub(crate) const FOLDER_CHUNKS: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("folder-chunks-1");
const CHUNK_FOLDERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("chunk-folders-1");
/// `folder (16) ‖ person (32) → envelope`: the folder's keys wrapped to that person's
/// key (opaque here), for a person recovering on a new device.
const KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("keys-1");
/// `folder (16) → Unix ms`: when a device of the folder last said which chunks its
/// retained versions still need (see [`RelayStore::report_live`]).
const LIVE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("live-1");
/// `folder (16) ‖ seq (u64 BE) → membership entry`: a shared folder's membership
/// chain, signed by its owner (readable here: roles, public keys, cuts; see
/// `weft_store::members`). `MEMBERS` and `PERSON_FOLDERS` follow its latest entry.
const MEMBERSHIP: TableDefinition<&[u8], &[u8]> = TableDefinition::new("membership-1");
/// Most membership entries one upload (or answer) carries.
pub const MAX_PUT_MEMBERSHIP: usize = weft_store::members::MAX_CHAIN_BATCH;

/// Most chunk ids one live report may name.
pub const MAX_LIVE_IDS: usize = 350_000;

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Largest key envelope a person may store per folder.
pub const MAX_KEY_ENVELOPE: usize = 4096;

/// Errors of the relay's storage. Refusals carry a short, stable reason label for
/// metrics (see [`RelayError::reason`]).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The uploading device has not registered (no certificate on file).
    #[error("device {0} is not registered at this relay (run `weft relay add` on it)")]
    UnknownDevice(String),
    /// A certificate that does not verify or is malformed.
    #[error("bad device certificate: {0}")]
    BadCertificate(String),
    /// The device's person is not a member of the folder with the needed rights.
    #[error("folder {folder}: {why}")]
    NotAllowed {
        /// The folder.
        folder: String,
        /// Why.
        why: String,
    },
    /// An entry that does not decode, verify or extend its author's chain.
    #[error("bad entry: {0}")]
    BadEntry(String),
    /// A chunk whose bytes do not hash to its id.
    #[error("chunk {0}: bytes do not match its id")]
    ChunkMismatch(String),
    /// An upload that would take the person over quota; nothing of it was stored.
    #[error("over quota: {used} of {quota} bytes used, this upload needs {need} more")]
    OverQuota {
        /// Bytes the person stores now.
        used: u64,
        /// The person's quota.
        quota: u64,
        /// Bytes the refused upload would have added.
        need: u64,
    },
    /// A request over a size or count limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The database.
    #[error("relay database: {0}")]
    Db(String),
    /// The filesystem.
    #[error("relay storage I/O at {path}: {source}")]
    Io {
        /// Where.
        path: String,
        /// What happened.
        source: std::io::Error,
    },
}

impl RelayError {
    /// A stable label for metrics (`rejections_total{reason="..."}`).
    pub fn reason(&self) -> &'static str {
        match self {
            RelayError::UnknownDevice(_) => "unknown_device",
            RelayError::BadCertificate(_) => "bad_certificate",
            RelayError::NotAllowed { .. } => "not_allowed",
            RelayError::BadEntry(_) => "bad_entry",
            RelayError::ChunkMismatch(_) => "chunk_mismatch",
            RelayError::OverQuota { .. } => "over_quota",
            RelayError::TooLarge(_) => "too_large",
            RelayError::Db(_) => "db",
            RelayError::Io { .. } => "io",
        }
    }
}

macro_rules! db_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for RelayError {
            fn from(e: $t) -> Self {
                RelayError::Db(e.to_string())
            }
        }
    )*};
}
db_error_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> RelayError {
    RelayError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A stored value or key that does not have the shape this code writes.
pub(crate) fn corrupt(what: &str) -> RelayError {
    RelayError::Db(format!("damaged record: {what}"))
}

/// Settings of the storage.
#[derive(Clone, Debug, Default)]
pub struct StorageConfig {
    /// Bytes (entries + chunks) each person may store; `None` for no limit.
    pub quota_per_person: Option<u64>,
}

/// What [`RelayStore::put_entries`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutEntries {
    /// Entries stored now.
    pub stored: usize,
    /// Entries already stored (same author, sequence and hash): accepted, not stored
    /// again, so an interrupted upload can simply be repeated.
    pub duplicates: usize,
}

/// Totals, for `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Persons with at least one registered device.
    pub persons: u64,
    /// Folders with something stored.
    pub folders: u64,
    /// Bytes of entries and chunks stored.
    pub stored_bytes: u64,
    /// Chunks stored.
    pub chunks: u64,
    /// Entries stored.
    pub entries: u64,
}

/// A claimed folder (`folders-1`). Counts are per folder: a chunk stored by two folders
/// counts (and is charged) in each.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct FolderRecord {
    /// The person who claimed it; its usage is charged to them.
    owner: PersonId,
    /// Entries stored.
    entries: u64,
    /// Their encoded bytes.
    entry_bytes: u64,
    /// Chunks stored.
    chunks: u64,
    /// Their ciphertext bytes.
    chunk_bytes: u64,
}

impl FolderRecord {
    fn decode(b: &[u8]) -> Result<FolderRecord, RelayError> {
        postcard::from_bytes(b).map_err(|_| corrupt("folder record"))
    }

    fn encode(&self) -> Vec<u8> {
        // postcard fails only on a full buffer or a type serde cannot describe;
        // neither can happen for this struct written to a Vec.
        postcard::to_stdvec(self).unwrap_or_default()
    }
}

/// The relay's database, opened again when redb refuses it: after a failed write (a
/// full disk), redb answers every later request with "previous I/O error" until the
/// database is opened anew. An always-on relay must not need a restart for that; a
/// failed commit leaves the one before it in place, so reopening loses nothing.
pub(crate) struct Db {
    path: PathBuf,
    /// How many times the database was opened, and the handle (`None` while a reopen
    /// waits for the old handle's last transaction).
    inner: RwLock<(u64, Option<Arc<Database>>)>,
}

impl Db {
    fn open(path: PathBuf) -> Result<Db, RelayError> {
        let db = Database::create(&path)?;
        Ok(Db {
            path,
            inner: RwLock::new((1, Some(Arc::new(db)))),
        })
    }

    /// The current handle and its generation, opening the database if it has none.
    fn current(&self) -> Result<(u64, Arc<Database>), RelayError> {
        let (generation, db) = self
            .inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match db {
            Some(db) => Ok((generation, db)),
            None => self.reopen(generation),
        }
    }

    /// Opens the database again, unless another thread already did since `failed`
    /// (the generation that failed; the caller must have let go of its handle, or the
    /// old database would stay open and locked).
    fn reopen(&self, failed: u64) -> Result<(u64, Arc<Database>), RelayError> {
        let mut g = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if let (generation, Some(db)) = &*g
            && *generation != failed
        {
            return Ok((*generation, db.clone()));
        }
        g.1 = None;
        let db = Arc::new(Database::create(&self.path)?);
        tracing::warn!("relay database opened again after a failed write");
        *g = (failed + 1, Some(db.clone()));
        Ok((failed + 1, db))
    }

    /// A transaction `begin` makes, reopening the database first if redb refuses it.
    fn begin<T, E: Into<redb::Error>>(
        &self,
        begin: impl Fn(&Database) -> Result<T, E>,
    ) -> Result<T, RelayError> {
        let (generation, db) = self.current()?;
        let first = begin(&db).map_err(Into::into);
        drop(db);
        match first {
            Err(redb::Error::PreviousIo) => {
                Ok(begin(&self.reopen(generation)?.1).map_err(Into::into)?)
            }
            r => Ok(r?),
        }
    }

    pub(crate) fn begin_write(&self) -> Result<redb::WriteTransaction, RelayError> {
        self.begin(Database::begin_write)
    }

    pub(crate) fn begin_read(&self) -> Result<redb::ReadTransaction, RelayError> {
        self.begin(Database::begin_read)
    }
}

/// The relay's storage (see the module docs). Safe to share between threads.
pub struct RelayStore {
    pub(crate) db: Db,
    /// `<dir>/blobs`.
    blobs: PathBuf,
    cfg: StorageConfig,
    /// Shared while an upload writes blobs and commits; exclusive for [`RelayStore::gc`].
    blob_lock: RwLock<()>,
}

/// Names temporary blob files uniquely within this process (with the pid, across
/// processes; only one process can open the database at a time).
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

// ---- keys and values -------------------------------------------------------------

pub(crate) fn person_bytes(p: &PersonId) -> &[u8; 32] {
    &p.0.0
}

pub(crate) fn chunk_bytes(c: &ChunkId) -> &[u8; 32] {
    &c.0.0
}

pub(crate) fn key2(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len());
    k.extend_from_slice(a);
    k.extend_from_slice(b);
    k
}

fn key_member(folder: &FolderId, person: &PersonId) -> Vec<u8> {
    key2(&folder.0, person_bytes(person))
}

fn key_tip(folder: &FolderId, author: &DeviceId) -> Vec<u8> {
    key2(&folder.0, author.as_bytes())
}

fn key_entry(folder: &FolderId, author: &DeviceId, seq: u64) -> Vec<u8> {
    let mut k = key_tip(folder, author);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(crate) fn u64_value(what: &str, b: &[u8]) -> Result<u64, RelayError> {
    let a: [u8; 8] = b.try_into().map_err(|_| corrupt(what))?;
    Ok(u64::from_le_bytes(a))
}

fn tip_value(seq: u64, hash: &Hash) -> [u8; 40] {
    let mut v = [0u8; 40];
    v[..8].copy_from_slice(&seq.to_le_bytes());
    v[8..].copy_from_slice(hash.as_bytes());
    v
}

fn decode_tip(b: &[u8]) -> Result<(u64, Hash), RelayError> {
    if b.len() != 40 {
        return Err(corrupt("chain tip"));
    }
    let seq = u64_value("chain tip", &b[..8])?;
    let hash: [u8; 32] = b[8..].try_into().map_err(|_| corrupt("chain tip"))?;
    Ok((seq, Hash(hash)))
}

/// The 32 bytes at `at` in a key.
pub(crate) fn key_32(k: &[u8], at: usize) -> Result<[u8; 32], RelayError> {
    k.get(at..at + 32)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| corrupt("key length"))
}

/// The 16 bytes at `at` in a key.
pub(crate) fn key_16(k: &[u8], at: usize) -> Result<[u8; 16], RelayError> {
    k.get(at..at + 16)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| corrupt("key length"))
}

/// The key range of every key starting with `prefix` (a non-empty id, so some byte of
/// it can be incremented unless it is all `0xff`).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Calls `f` with each `(key, value)` of `table` whose key starts with `prefix`, until
/// it returns `false`.
pub(crate) fn scan_prefix<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    prefix: &[u8],
    mut f: impl FnMut(&[u8], &[u8]) -> Result<bool, RelayError>,
) -> Result<(), RelayError> {
    let end = prefix_end(prefix);
    let iter = match &end {
        Some(e) => table.range::<&[u8]>(prefix..e.as_slice())?,
        None => table.range::<&[u8]>(prefix..)?,
    };
    for item in iter {
        let (k, v) = item?;
        if !f(k.value(), v.value())? {
            break;
        }
    }
    Ok(())
}

/// The person of a registered device (its certificate is re-verified: the database is
/// disk, not memory).
pub(crate) fn person_in<T: ReadableTable<&'static [u8], &'static [u8]>>(
    devices: &T,
    device: &DeviceId,
) -> Result<Option<PersonId>, RelayError> {
    match devices.get(device.as_bytes().as_slice())? {
        None => Ok(None),
        Some(v) => {
            let cert = DeviceCertificate::from_bytes(v.value())
                .map_err(|e| RelayError::Db(format!("stored certificate of {device}: {e}")))?;
            if cert.body.device != *device {
                return Err(corrupt("certificate stored under another device"));
            }
            Ok(Some(cert.body.person))
        }
    }
}

/// A person's role in a folder, if a member.
pub(crate) fn role_in<T: ReadableTable<&'static [u8], &'static [u8]>>(
    members: &T,
    folder: &FolderId,
    person: &PersonId,
) -> Result<Option<u8>, RelayError> {
    match members.get(key_member(folder, person).as_slice())? {
        None => Ok(None),
        Some(v) => match v.value() {
            [role] => Ok(Some(*role)),
            _ => Err(corrupt("member role")),
        },
    }
}

fn role_byte(role: Role) -> u8 {
    match role {
        Role::Owner => ROLE_OWNER,
        Role::Editor => ROLE_EDITOR,
        Role::Viewer => 3,
    }
}

fn membership_key(folder: &FolderId, seq: u64) -> Vec<u8> {
    key2(&folder.0, &seq.to_be_bytes())
}

/// The stored membership chain of `folder`, oldest first.
fn chain_in<T: ReadableTable<&'static [u8], &'static [u8]>>(
    t: &T,
    folder: &FolderId,
) -> Result<Vec<Vec<u8>>, RelayError> {
    let mut out = Vec::new();
    scan_prefix(t, &folder.0, |_, v| {
        out.push(v.to_vec());
        Ok(true)
    })?;
    Ok(out)
}

fn role_writes(role: u8) -> bool {
    role == ROLE_OWNER || role == ROLE_EDITOR
}

fn usage_in<T: ReadableTable<&'static [u8], &'static [u8]>>(
    usage: &T,
    person: &PersonId,
) -> Result<u64, RelayError> {
    match usage.get(person_bytes(person).as_slice())? {
        None => Ok(0),
        Some(v) => u64_value("usage", v.value()),
    }
}

fn not_allowed(folder: &FolderId, why: String) -> RelayError {
    RelayError::NotAllowed {
        folder: folder.to_string(),
        why,
    }
}

fn bad_entry(e: impl std::fmt::Display) -> RelayError {
    RelayError::BadEntry(e.to_string())
}

/// Fsyncs a directory, so that a rename or a new entry in it is durable.
fn sync_dir(dir: &Path) -> Result<(), RelayError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

/// What an upload of chunks adds, worked out inside a write transaction.
struct ChunkPlan {
    /// Indexes (into the upload) of chunks the folder does not store yet, one per id.
    new: Vec<usize>,
    /// Their bytes.
    need: u64,
}

impl RelayStore {
    /// Opens (creating if needed) the storage in `dir`.
    pub fn open(dir: &Path, cfg: StorageConfig) -> Result<RelayStore, RelayError> {
        let blobs = dir.join(BLOBS_DIR);
        fs::create_dir_all(&blobs).map_err(|e| io_err(&blobs, e))?;
        let db = Db::open(dir.join(DB_FILE))?;
        // Blobs staged by a process that died mid-upload: no other process holds this
        // directory now (the database is locked), so they are garbage at once, not at
        // the next gc hours later, while they may hold the room uploads need.
        if let Ok(staged) = fs::read_dir(&blobs) {
            for e in staged.flatten() {
                if e.file_name().to_string_lossy().starts_with(TMP_PREFIX)
                    && e.file_type().is_ok_and(|t| t.is_file())
                {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let schema = match meta.get("schema")? {
                Some(v) => Some(
                    <[u8; 4]>::try_from(v.value())
                        .map(u32::from_le_bytes)
                        .map_err(|_| corrupt("schema version"))?,
                ),
                None => None,
            };
            match schema {
                Some(SCHEMA_VERSION) => {}
                Some(other) => {
                    return Err(RelayError::Db(format!(
                        "{}: schema version {other}, this relay reads {SCHEMA_VERSION}",
                        dir.join(DB_FILE).display()
                    )));
                }
                None => {
                    meta.insert("schema", SCHEMA_VERSION.to_le_bytes().as_slice())?;
                }
            }
            for t in [
                DEVICES,
                PERSONS,
                FOLDERS,
                MEMBERS,
                PERSON_FOLDERS,
                USAGE,
                LOG,
                TIPS,
                BLOBS,
                FOLDER_CHUNKS,
                CHUNK_FOLDERS,
                KEYS,
                LIVE,
                MEMBERSHIP,
                crate::links::LINKS,
                crate::links::LINK_CHUNKS,
                crate::links::PERSON_LINKS,
            ] {
                txn.open_table(t)?;
            }
        }
        txn.commit()?;
        Ok(RelayStore {
            db,
            blobs,
            cfg,
            blob_lock: RwLock::new(()),
        })
    }

    /// Registers a device by its certificate (encoded, canonical, verified here): the
    /// person it names has enabled this relay. Registering again is harmless.
    /// Returns the person.
    ///
    /// A device stays with the person that first registered it: a certificate from
    /// another person for an already registered device is refused (otherwise anyone
    /// could take a device's rights away by certifying its public key themselves).
    pub fn register(&self, cert: &[u8]) -> Result<PersonId, RelayError> {
        if cert.len() > MAX_CERT_LEN {
            return Err(RelayError::BadCertificate(format!(
                "{} bytes is over the limit of {MAX_CERT_LEN}",
                cert.len()
            )));
        }
        let c = DeviceCertificate::from_bytes(cert)
            .map_err(|e| RelayError::BadCertificate(e.to_string()))?;
        let (person, device) = (c.body.person, c.body.device);
        let same = |known: PersonId| {
            if known == person {
                Ok(person)
            } else {
                Err(RelayError::BadCertificate(format!(
                    "device {device} is registered to another person"
                )))
            }
        };
        // Known: no write.
        if let Some(known) = self.person_of(&device)? {
            return same(known);
        }
        let txn = self.db.begin_write()?;
        {
            let mut devices = txn.open_table(DEVICES)?;
            if let Some(known) = person_in(&devices, &device)? {
                return same(known); // registered meanwhile; the transaction is dropped
            }
            devices.insert(device.as_bytes().as_slice(), cert)?;
            let mut persons = txn.open_table(PERSONS)?;
            let key = person_bytes(&person).as_slice();
            let n = match persons.get(key)? {
                Some(v) => u64_value("person", v.value())?,
                None => 0,
            };
            persons.insert(key, (n + 1).to_le_bytes().as_slice())?;
        }
        txn.commit()?;
        tracing::info!(%device, %person, "device registered");
        Ok(person)
    }

    /// The person of a registered device.
    pub fn person_of(&self, device: &DeviceId) -> Result<Option<PersonId>, RelayError> {
        let r = self.db.begin_read()?;
        person_in(&r.open_table(DEVICES)?, device)
    }

    /// The stored certificate of a registered device (its canonical encoding).
    pub fn device_cert(&self, device: &DeviceId) -> Result<Option<Vec<u8>>, RelayError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(DEVICES)?;
        let Some(v) = t.get(device.as_bytes().as_slice())? else {
            return Ok(None);
        };
        let cert = DeviceCertificate::from_bytes(v.value())
            .map_err(|e| RelayError::Db(format!("stored certificate of {device}: {e}")))?;
        if cert.body.device != *device {
            return Err(corrupt("certificate stored under another device"));
        }
        Ok(Some(v.value().to_vec()))
    }

    /// The uploader's person, which must be registered.
    fn registered(txn: &WriteTransaction, uploader: &DeviceId) -> Result<PersonId, RelayError> {
        person_in(&txn.open_table(DEVICES)?, uploader)?
            .ok_or_else(|| RelayError::UnknownDevice(uploader.to_string()))
    }

    /// The record of `folder` for an upload by `person`, who must have write rights;
    /// an unclaimed folder is claimed for `person` in `txn` (so the claim stands only if
    /// the upload commits).
    fn folder_for_write(
        txn: &WriteTransaction,
        person: &PersonId,
        folder: &FolderId,
    ) -> Result<FolderRecord, RelayError> {
        let existing = match txn.open_table(FOLDERS)?.get(folder.0.as_slice())? {
            Some(v) => Some(FolderRecord::decode(v.value())?),
            None => None,
        };
        if let Some(rec) = existing {
            return match role_in(&txn.open_table(MEMBERS)?, folder, person)? {
                Some(role) if role_writes(role) => Ok(rec),
                Some(_) => Err(not_allowed(
                    folder,
                    "your person may read this folder but not write to it".into(),
                )),
                None => Err(not_allowed(
                    folder,
                    "this folder belongs to another person".into(),
                )),
            };
        }
        let rec = FolderRecord {
            owner: *person,
            entries: 0,
            entry_bytes: 0,
            chunks: 0,
            chunk_bytes: 0,
        };
        txn.open_table(FOLDERS)?
            .insert(folder.0.as_slice(), rec.encode().as_slice())?;
        txn.open_table(MEMBERS)?.insert(
            key_member(folder, person).as_slice(),
            [ROLE_OWNER].as_slice(),
        )?;
        txn.open_table(PERSON_FOLDERS)?.insert(
            key2(person_bytes(person), &folder.0).as_slice(),
            [ROLE_OWNER].as_slice(),
        )?;
        Ok(rec)
    }

    /// Refuses, before any costly check of an upload, an uploader that is not registered
    /// or may not write to `folder` (unclaimed folders are open). The write transaction
    /// checks again.
    fn precheck_writer(&self, uploader: &DeviceId, folder: &FolderId) -> Result<(), RelayError> {
        let r = self.db.begin_read()?;
        let person = person_in(&r.open_table(DEVICES)?, uploader)?
            .ok_or_else(|| RelayError::UnknownDevice(uploader.to_string()))?;
        if r.open_table(FOLDERS)?.get(folder.0.as_slice())?.is_none() {
            return Ok(());
        }
        match role_in(&r.open_table(MEMBERS)?, folder, &person)? {
            Some(role) if role_writes(role) => Ok(()),
            _ => Err(not_allowed(
                folder,
                "your person may not write to this folder".into(),
            )),
        }
    }

    /// Refuses an upload of `need` more bytes that would take `owner` over quota;
    /// returns the owner's usage otherwise.
    fn check_quota(
        &self,
        txn: &WriteTransaction,
        owner: &PersonId,
        need: u64,
    ) -> Result<u64, RelayError> {
        let used = usage_in(&txn.open_table(USAGE)?, owner)?;
        if let Some(quota) = self.cfg.quota_per_person
            && need > 0
            && used.saturating_add(need) > quota
        {
            return Err(RelayError::OverQuota { used, quota, need });
        }
        Ok(used)
    }

    /// Records `rec` and the owner's new usage.
    fn charge(
        txn: &WriteTransaction,
        folder: &FolderId,
        rec: &FolderRecord,
        used: u64,
        need: u64,
    ) -> Result<(), RelayError> {
        txn.open_table(FOLDERS)?
            .insert(folder.0.as_slice(), rec.encode().as_slice())?;
        txn.open_table(USAGE)?.insert(
            person_bytes(&rec.owner).as_slice(),
            used.saturating_add(need).to_le_bytes().as_slice(),
        )?;
        Ok(())
    }

    /// Stores encoded entries of `folder` uploaded by `uploader`, all or nothing:
    /// each must decode, belong to `folder`, be written by a registered device of a
    /// person with write rights in the folder (the uploader's person claims an
    /// unclaimed folder), carry a valid signature, and extend its author's chain (the
    /// stored tip, or an earlier entry of the same batch). Re-sent entries that are
    /// already stored count as duplicates; a different entry at a stored sequence
    /// (a fork) is refused. One durable commit.
    pub fn put_entries(
        &self,
        uploader: &DeviceId,
        folder: &FolderId,
        entries: &[Vec<u8>],
    ) -> Result<PutEntries, RelayError> {
        if entries.len() > MAX_PUT_ENTRIES {
            return Err(RelayError::TooLarge(format!(
                "{} entries in one upload (at most {MAX_PUT_ENTRIES})",
                entries.len()
            )));
        }
        let total: usize = entries.iter().map(Vec::len).sum();
        if total > MAX_PUT_ENTRY_BYTES {
            return Err(RelayError::TooLarge(format!(
                "{total} bytes of entries in one upload (at most {MAX_PUT_ENTRY_BYTES})"
            )));
        }
        self.precheck_writer(uploader, folder)?;
        // What needs no database: format, folder, signature.
        let mut decoded = Vec::with_capacity(entries.len());
        for raw in entries {
            if raw.len() > MAX_ENTRY_LEN {
                return Err(RelayError::TooLarge(format!(
                    "an entry of {} bytes (at most {MAX_ENTRY_LEN})",
                    raw.len()
                )));
            }
            let e = Entry::decode(raw).map_err(bad_entry)?;
            if e.header.folder != *folder {
                return Err(RelayError::BadEntry(format!(
                    "entry {} #{} belongs to folder {}, not {folder}",
                    e.header.author, e.header.seq, e.header.folder
                )));
            }
            e.verify_signature().map_err(bad_entry)?;
            // `decode` accepts only the canonical encoding, so this is the entry's hash.
            decoded.push((e, Hash::of(raw), raw));
        }

        let txn = self.db.begin_write()?;
        let person = Self::registered(&txn, uploader)?;
        if decoded.is_empty() {
            return Ok(PutEntries::default());
        }
        let mut rec = Self::folder_for_write(&txn, &person, folder)?;

        let mut out = PutEntries::default();
        let mut new: Vec<(&Entry, &Vec<u8>)> = Vec::new();
        let mut need = 0u64;
        {
            let devices = txn.open_table(DEVICES)?;
            let members = txn.open_table(MEMBERS)?;
            let tips = txn.open_table(TIPS)?;
            let log = txn.open_table(LOG)?;
            let mut writers: HashSet<DeviceId> = HashSet::new();
            let membership = match chain_in(&txn.open_table(MEMBERSHIP)?, folder)? {
                chain if chain.is_empty() => None,
                chain => Some(
                    Membership::from_stored_chain(*folder, rec.owner, &chain)
                        .map_err(|e| corrupt(&format!("stored membership chain: {e}")))?,
                ),
            };
            // Per author, the tip after this batch's new entries so far.
            let mut batch_tip: HashMap<DeviceId, (u64, Hash)> = HashMap::new();
            // New entries of this batch by (author, seq).
            let mut batch: HashMap<(DeviceId, u64), Hash> = HashMap::new();
            for (e, hash, raw) in &decoded {
                let (author, seq) = (e.header.author, e.header.seq);
                if let Some(m) = &membership {
                    // Shared: judged per entry (a viewer's or removed member's device
                    // keeps what it wrote before its cut).
                    let p = person_in(&devices, &author)?
                        .ok_or_else(|| RelayError::UnknownDevice(author.to_string()))?;
                    if !m.may_write(&p, &author, seq) {
                        return Err(not_allowed(
                            folder,
                            format!(
                                "author {author} may not write here (not a member, a viewer, or removed)"
                            ),
                        ));
                    }
                } else if !writers.contains(&author) {
                    let p = person_in(&devices, &author)?
                        .ok_or_else(|| RelayError::UnknownDevice(author.to_string()))?;
                    if !role_in(&members, folder, &p)?.is_some_and(role_writes) {
                        return Err(not_allowed(
                            folder,
                            format!(
                                "author {author} is not a device of a person who may write here"
                            ),
                        ));
                    }
                    writers.insert(author);
                }
                let tip = match batch_tip.get(&author) {
                    Some(t) => Some(*t),
                    None => match tips.get(key_tip(folder, &author).as_slice())? {
                        Some(v) => Some(decode_tip(v.value())?),
                        None => None,
                    },
                };
                if let Some((tip_seq, _)) = tip
                    && seq <= tip_seq
                {
                    let there = match batch.get(&(author, seq)) {
                        Some(h) => *h,
                        None => match log.get(key_entry(folder, &author, seq).as_slice())? {
                            Some(v) => Hash::of(v.value()),
                            None => return Err(corrupt("log entry below its author's tip")),
                        },
                    };
                    if there == *hash {
                        out.duplicates += 1;
                        continue;
                    }
                    return Err(RelayError::BadEntry(format!(
                        "entry {author} #{seq} forks its author's chain: another entry is stored at that sequence"
                    )));
                }
                check_chain(e, tip).map_err(bad_entry)?;
                batch_tip.insert(author, (seq, *hash));
                batch.insert((author, seq), *hash);
                new.push((e, raw));
                need += raw.len() as u64;
            }
        }
        if new.is_empty() {
            return Ok(out); // all duplicates: nothing to commit
        }
        let used = self.check_quota(&txn, &rec.owner, need)?;
        {
            let mut log = txn.open_table(LOG)?;
            let mut tips = txn.open_table(TIPS)?;
            for (e, raw) in &new {
                let (author, seq) = (e.header.author, e.header.seq);
                log.insert(key_entry(folder, &author, seq).as_slice(), raw.as_slice())?;
                tips.insert(
                    key_tip(folder, &author).as_slice(),
                    tip_value(seq, &Hash::of(raw)).as_slice(),
                )?;
            }
        }
        out.stored = new.len();
        rec.entries += new.len() as u64;
        rec.entry_bytes += need;
        Self::charge(&txn, folder, &rec, used, need)?;
        txn.commit()?;
        Ok(out)
    }

    /// Per author, the last stored sequence number of `folder`.
    pub fn tips(&self, folder: &FolderId) -> Result<Vec<(DeviceId, u64)>, RelayError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(TIPS)?;
        let mut out = Vec::new();
        scan_prefix(&t, &folder.0, |k, v| {
            let author = DeviceId(PublicKey(key_32(k, 16)?));
            out.push((author, decode_tip(v)?.0));
            Ok(true)
        })?;
        Ok(out)
    }

    /// Encoded entries of `folder` that a reader with tips `have` lacks, oldest first
    /// per author, at most about `max_bytes` (at least one entry if any is missing),
    /// and whether more remain.
    ///
    /// `max_bytes` is lowered to [`MAX_ENTRIES_SINCE_BYTES`]; more than [`MAX_IDS`]
    /// tips in `have` are refused.
    pub fn entries_since(
        &self,
        folder: &FolderId,
        have: &[(DeviceId, u64)],
        max_bytes: usize,
    ) -> Result<(Vec<Vec<u8>>, bool), RelayError> {
        if have.len() > MAX_IDS {
            return Err(RelayError::TooLarge(format!(
                "{} tips (at most {MAX_IDS})",
                have.len()
            )));
        }
        let max_bytes = max_bytes.min(MAX_ENTRIES_SINCE_BYTES);
        let have: HashMap<DeviceId, u64> = have.iter().copied().collect();
        let r = self.db.begin_read()?;
        let tips = r.open_table(TIPS)?;
        let log = r.open_table(LOG)?;
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        scan_prefix(&tips, &folder.0, |k, v| {
            let author = DeviceId(PublicKey(key_32(k, 16)?));
            let (tip, _) = decode_tip(v)?;
            let from = have.get(&author).copied().unwrap_or(0).saturating_add(1);
            if from > tip {
                return Ok(true);
            }
            let start = key_entry(folder, &author, from);
            let end = key_entry(folder, &author, tip);
            for item in log.range::<&[u8]>(start.as_slice()..=end.as_slice())? {
                let (_, e) = item?;
                let e = e.value();
                if !out.is_empty() && bytes.saturating_add(e.len()) > max_bytes {
                    more = true;
                    return Ok(false);
                }
                bytes += e.len();
                out.push(e.to_vec());
            }
            Ok(true)
        })?;
        Ok((out, more))
    }

    /// Of `ids`, those not stored for `folder` (what a device still has to upload).
    ///
    /// Each id is reported once; more than [`MAX_IDS`] ids are refused.
    pub fn missing_chunks(
        &self,
        folder: &FolderId,
        ids: &[ChunkId],
    ) -> Result<Vec<ChunkId>, RelayError> {
        if ids.len() > MAX_IDS {
            return Err(RelayError::TooLarge(format!(
                "{} chunk ids (at most {MAX_IDS})",
                ids.len()
            )));
        }
        let r = self.db.begin_read()?;
        let t = r.open_table(FOLDER_CHUNKS)?;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for id in ids {
            if seen.insert(*id)
                && t.get(key2(&folder.0, chunk_bytes(id)).as_slice())?
                    .is_none()
            {
                out.push(*id);
            }
        }
        Ok(out)
    }

    /// Works out, inside `txn`, what storing `chunks` in `folder` adds: the uploader
    /// must be registered and may write (an unclaimed folder is claimed in `txn`), the
    /// owner's quota must hold the new bytes.
    fn plan_chunks(
        &self,
        txn: &WriteTransaction,
        uploader: &DeviceId,
        folder: &FolderId,
        chunks: &[(ChunkId, Vec<u8>)],
    ) -> Result<(FolderRecord, ChunkPlan, u64), RelayError> {
        let person = Self::registered(txn, uploader)?;
        let rec = Self::folder_for_write(txn, &person, folder)?;
        let mut plan = ChunkPlan {
            new: Vec::new(),
            need: 0,
        };
        {
            let t = txn.open_table(FOLDER_CHUNKS)?;
            let mut seen = HashSet::new();
            for (i, (id, bytes)) in chunks.iter().enumerate() {
                if seen.insert(*id)
                    && t.get(key2(&folder.0, chunk_bytes(id)).as_slice())?
                        .is_none()
                {
                    plan.new.push(i);
                    plan.need += bytes.len() as u64;
                }
            }
        }
        let used = self.check_quota(txn, &rec.owner, plan.need)?;
        Ok((rec, plan, used))
    }

    /// Stores chunks of `folder` uploaded by `uploader` (a registered device of a
    /// person with write rights; claims an unclaimed folder), all or nothing: each
    /// one's bytes must hash to its id; the person's quota must hold them all. Each
    /// blob is written to a temporary file, fsynced and renamed, before the commit
    /// that records them. Chunks already stored for the folder cost nothing. Returns
    /// how many were new.
    ///
    /// At most [`MAX_PUT_CHUNKS`] chunks and [`MAX_PUT_CHUNK_BYTES`] bytes per call, each
    /// at most [`MAX_BLOB_LEN`] bytes.
    pub fn put_chunks(
        &self,
        uploader: &DeviceId,
        folder: &FolderId,
        chunks: &[(ChunkId, Vec<u8>)],
    ) -> Result<usize, RelayError> {
        if chunks.len() > MAX_PUT_CHUNKS {
            return Err(RelayError::TooLarge(format!(
                "{} chunks in one upload (at most {MAX_PUT_CHUNKS})",
                chunks.len()
            )));
        }
        let total: usize = chunks.iter().map(|(_, b)| b.len()).sum();
        if total > MAX_PUT_CHUNK_BYTES {
            return Err(RelayError::TooLarge(format!(
                "{total} bytes of chunks in one upload (at most {MAX_PUT_CHUNK_BYTES})"
            )));
        }
        self.precheck_writer(uploader, folder)?;
        for (id, bytes) in chunks {
            if bytes.len() > MAX_BLOB_LEN {
                return Err(RelayError::TooLarge(format!(
                    "chunk {id} of {} bytes (at most {MAX_BLOB_LEN})",
                    bytes.len()
                )));
            }
            if id.check(bytes).is_err() {
                return Err(RelayError::ChunkMismatch(id.to_string()));
            }
        }

        let _shared = self
            .blob_lock
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        // First pass: refuse early (rights, quota) without writing a blob, and find
        // what to write. The transaction only reads (a claim in it is dropped).
        let to_write: Vec<usize> = {
            let txn = self.db.begin_write()?;
            self.plan_chunks(&txn, uploader, folder, chunks)?;
            let blobs = txn.open_table(BLOBS)?;
            let mut seen = HashSet::new();
            let mut w = Vec::new();
            for (i, (id, bytes)) in chunks.iter().enumerate() {
                if !seen.insert(*id) {
                    continue;
                }
                let recorded = blobs.get(chunk_bytes(id).as_slice())?.is_some();
                // A recorded blob is rewritten only if its file does not hold these
                // bytes: uploading a chunk again repairs a damaged blob. (Devices
                // upload only what `missing_chunks` reports, so this read is rare.)
                if !recorded || !self.blob_holds(id, bytes) {
                    w.push(i);
                }
            }
            w
        };
        if !to_write.is_empty() {
            self.write_blobs(to_write.iter().map(|&i| &chunks[i]))?;
        }

        // Second pass: the same checks (another upload may have committed meanwhile),
        // then the records, in one commit.
        let txn = self.db.begin_write()?;
        let (mut rec, plan, used) = self.plan_chunks(&txn, uploader, folder, chunks)?;
        if plan.new.is_empty() {
            return Ok(0);
        }
        {
            let mut blobs = txn.open_table(BLOBS)?;
            let mut by_folder = txn.open_table(FOLDER_CHUNKS)?;
            let mut by_chunk = txn.open_table(CHUNK_FOLDERS)?;
            for &i in &plan.new {
                let (id, bytes) = &chunks[i];
                let c = chunk_bytes(id);
                if blobs.get(c.as_slice())?.is_none() {
                    blobs.insert(c.as_slice(), (bytes.len() as u64).to_le_bytes().as_slice())?;
                }
                // When the chunk was last known to be needed: now.
                by_folder.insert(
                    key2(&folder.0, c).as_slice(),
                    now_ms().to_le_bytes().as_slice(),
                )?;
                by_chunk.insert(key2(c, &folder.0).as_slice(), [].as_slice())?;
            }
        }
        rec.chunks += plan.new.len() as u64;
        rec.chunk_bytes += plan.need;
        Self::charge(&txn, folder, &rec, used, plan.need)?;
        txn.commit()?;
        Ok(plan.new.len())
    }

    /// `blobs/<2 hex>/<64 hex>`.
    fn blob_path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.0.to_hex();
        self.blobs.join(&hex[..2]).join(hex)
    }

    /// Writes blobs durably: each to a temporary file, fsynced, renamed into place;
    /// then each directory touched is fsynced.
    fn write_blobs<'a>(
        &self,
        chunks: impl Iterator<Item = &'a (ChunkId, Vec<u8>)>,
    ) -> Result<(), RelayError> {
        // A failed upload leaves no staged blob behind: on a full disk they would only
        // take the room its retry needs (gc would remove them, hours later).
        let discard = |staged: &[(PathBuf, PathBuf)]| {
            for (tmp, _) in staged {
                let _ = fs::remove_file(tmp);
            }
        };
        let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
        for (id, bytes) in chunks {
            let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let tmp = self
                .blobs
                .join(format!("{TMP_PREFIX}{}-{n}", std::process::id()));
            staged.push((tmp.clone(), self.blob_path(id)));
            let written = File::create(&tmp).and_then(|mut f| {
                f.write_all(bytes)?;
                f.sync_all()
            });
            if let Err(e) = written {
                discard(&staged);
                return Err(io_err(&tmp, e));
            }
        }
        let mut dirs = BTreeSet::new();
        let mut new_dir = false;
        for (i, (tmp, path)) in staged.iter().enumerate() {
            let Some(dir) = path.parent() else {
                discard(&staged[i..]);
                return Err(io_err(path, std::io::ErrorKind::InvalidInput.into()));
            };
            match fs::create_dir(dir) {
                Ok(()) => new_dir = true,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    discard(&staged[i..]);
                    return Err(io_err(dir, e));
                }
            }
            if let Err(e) = fs::rename(tmp, path) {
                discard(&staged[i..]);
                return Err(io_err(path, e));
            }
            dirs.insert(dir.to_path_buf());
        }
        for d in &dirs {
            sync_dir(d)?;
        }
        if new_dir {
            sync_dir(&self.blobs)?;
        }
        Ok(())
    }

    /// Whether the blob file of `id` holds exactly `bytes`.
    fn blob_holds(&self, id: &ChunkId, bytes: &[u8]) -> bool {
        let Ok(f) = File::open(self.blob_path(id)) else {
            return false;
        };
        let mut buf = Vec::with_capacity(bytes.len());
        f.take(bytes.len() as u64 + 1).read_to_end(&mut buf).is_ok() && buf == bytes
    }

    /// Reads a blob of recorded length `len`, checked against its id; `None` (with a
    /// warning) if it is missing, of another length or damaged.
    pub(crate) fn read_blob(&self, id: &ChunkId, len: u64) -> Result<Option<Vec<u8>>, RelayError> {
        if len > MAX_BLOB_LEN as u64 {
            tracing::warn!(chunk = %id, len, "blob record over the size limit; not read");
            return Ok(None);
        }
        let path = self.blob_path(id);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(chunk = %id, "recorded blob is missing");
                return Ok(None);
            }
            Err(e) => return Err(io_err(&path, e)),
        };
        // `len` ≤ MAX_BLOB_LEN, so this fits any usize.
        let mut buf = Vec::with_capacity(len as usize);
        f.take(len + 1)
            .read_to_end(&mut buf)
            .map_err(|e| io_err(&path, e))?;
        if buf.len() as u64 != len || id.check(&buf).is_err() {
            tracing::warn!(chunk = %id, "blob does not match its id: damaged on disk");
            return Ok(None);
        }
        Ok(Some(buf))
    }

    /// A chunk's ciphertext for `reader`, if it is stored in a folder whose member
    /// the reader's person is (`None` otherwise, as if absent). The blob is checked
    /// against its id before it is returned (a damaged blob reads as absent).
    pub fn chunk(&self, reader: &DeviceId, id: &ChunkId) -> Result<Option<Vec<u8>>, RelayError> {
        let len = {
            let r = self.db.begin_read()?;
            let Some(person) = person_in(&r.open_table(DEVICES)?, reader)? else {
                return Ok(None);
            };
            let members = r.open_table(MEMBERS)?;
            let mut readable = false;
            scan_prefix(&r.open_table(CHUNK_FOLDERS)?, chunk_bytes(id), |k, _| {
                let folder = FolderId(key_16(k, 32)?);
                readable = role_in(&members, &folder, &person)?.is_some();
                Ok(!readable)
            })?;
            if !readable {
                return Ok(None);
            }
            match r.open_table(BLOBS)?.get(chunk_bytes(id).as_slice())? {
                Some(v) => u64_value("blob length", v.value())?,
                None => return Err(corrupt("chunk record without a blob record")),
            }
        };
        self.read_blob(id, len)
    }

    /// Stores the uploader's person's envelope of `folder`'s keys (sealed to that
    /// person's key: the relay cannot open it), replacing an earlier one. Any member
    /// may store its own; an unclaimed folder is claimed, as by any first upload.
    pub fn put_key(
        &self,
        uploader: &DeviceId,
        folder: &FolderId,
        envelope: &[u8],
    ) -> Result<(), RelayError> {
        if envelope.len() > MAX_KEY_ENVELOPE {
            return Err(RelayError::TooLarge(format!(
                "a key envelope of {} bytes (at most {MAX_KEY_ENVELOPE})",
                envelope.len()
            )));
        }
        let txn = self.db.begin_write()?;
        {
            let person = Self::registered(&txn, uploader)?;
            let member = role_in(&txn.open_table(MEMBERS)?, folder, &person)?.is_some();
            if !member {
                // Claims the folder if nobody has; refuses a stranger's folder.
                Self::folder_for_write(&txn, &person, folder)?;
            }
            txn.open_table(KEYS)?
                .insert(key_member(folder, &person).as_slice(), envelope)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The key envelopes `person` stored: one per folder.
    pub fn keys_of(&self, person: &PersonId) -> Result<Vec<(FolderId, Vec<u8>)>, RelayError> {
        let r = self.db.begin_read()?;
        let keys = r.open_table(KEYS)?;
        let mut out = Vec::new();
        for folder in self.folders_of(person)? {
            if let Some(v) = keys.get(key_member(&folder, person).as_slice())? {
                out.push((folder, v.value().to_vec()));
            }
        }
        Ok(out)
    }

    /// Records which of `folder`'s chunks are still needed, as a device of a person
    /// with write rights computed them from the log it can read (the relay cannot): the
    /// chunks of current versions and of versions superseded or deleted within the
    /// retention period. They count as needed as of `now_ms`; a chunk a later report
    /// leaves out becomes garbage once the retention period has passed since it was
    /// last needed (see [`RelayStore::expire`]). Returns how many stored chunks it named.
    pub fn report_live(
        &self,
        uploader: &DeviceId,
        folder: &FolderId,
        ids: &[ChunkId],
        now_ms: u64,
    ) -> Result<usize, RelayError> {
        if ids.len() > MAX_LIVE_IDS {
            return Err(RelayError::TooLarge(format!(
                "a live report of {} chunks (at most {MAX_LIVE_IDS})",
                ids.len()
            )));
        }
        let txn = self.db.begin_write()?;
        let mut named = 0;
        {
            let person = Self::registered(&txn, uploader)?;
            match role_in(&txn.open_table(MEMBERS)?, folder, &person)? {
                Some(role) if role_writes(role) => {}
                _ => {
                    return Err(not_allowed(
                        folder,
                        "only a member with write rights says what a folder still needs".into(),
                    ));
                }
            }
            let mut t = txn.open_table(FOLDER_CHUNKS)?;
            for id in ids {
                let k = key2(&folder.0, chunk_bytes(id));
                if t.get(k.as_slice())?.is_some() {
                    t.insert(k.as_slice(), now_ms.to_le_bytes().as_slice())?;
                    named += 1;
                }
            }
            txn.open_table(LIVE)?
                .insert(folder.0.as_slice(), now_ms.to_le_bytes().as_slice())?;
        }
        txn.commit()?;
        Ok(named)
    }

    /// Forgets the chunks of folders with a live report that the latest report left
    /// out and that nothing has needed for `retention_days`: their records go, their
    /// bytes are no longer charged, and a blob no folder holds any more becomes
    /// garbage for [`RelayStore::gc`]. Folders without a report keep everything. Log
    /// entries are kept (they are small, and a device needs the whole chain).
    /// Returns (chunks forgotten, bytes no longer charged).
    pub fn expire(&self, now_ms: u64, retention_days: u32) -> Result<(u64, u64), RelayError> {
        let retention = u64::from(retention_days) * 86_400_000;
        let _exclusive = self
            .blob_lock
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let txn = self.db.begin_write()?;
        let mut out = (0u64, 0u64);
        {
            let mut reports = Vec::new();
            for item in txn.open_table(LIVE)?.iter()? {
                let (k, v) = item?;
                reports.push((key_16(k.value(), 0)?, u64_value("live report", v.value())?));
            }
            let mut by_folder = txn.open_table(FOLDER_CHUNKS)?;
            let mut by_chunk = txn.open_table(CHUNK_FOLDERS)?;
            let mut blobs = txn.open_table(BLOBS)?;
            let mut folders = txn.open_table(FOLDERS)?;
            let mut usage = txn.open_table(USAGE)?;
            for (f, reported) in reports {
                let folder = FolderId(f);
                let mut dead = Vec::new();
                scan_prefix(&by_folder, &folder.0, |k, v| {
                    let needed = match <[u8; 8]>::try_from(v) {
                        Ok(b) => u64::from_le_bytes(b),
                        Err(_) => return Ok(true),
                    };
                    if needed < reported && now_ms.saturating_sub(needed) >= retention {
                        dead.push(key_32(k, 16)?);
                    }
                    Ok(true)
                })?;
                if dead.is_empty() {
                    continue;
                }
                let Some(mut rec) = folders
                    .get(folder.0.as_slice())?
                    .map(|v| FolderRecord::decode(v.value()))
                    .transpose()?
                else {
                    continue;
                };
                let mut freed = 0u64;
                for c in &dead {
                    by_folder.remove(key2(&folder.0, c).as_slice())?;
                    by_chunk.remove(key2(c, &folder.0).as_slice())?;
                    let len = match blobs.get(c.as_slice())? {
                        Some(v) => u64_value("blob length", v.value())?,
                        None => 0,
                    };
                    freed += len;
                    let mut held = false;
                    scan_prefix(&by_chunk, c, |_, _| {
                        held = true;
                        Ok(false)
                    })?;
                    if !held {
                        blobs.remove(c.as_slice())?;
                    }
                }
                rec.chunks = rec.chunks.saturating_sub(dead.len() as u64);
                rec.chunk_bytes = rec.chunk_bytes.saturating_sub(freed);
                folders.insert(folder.0.as_slice(), rec.encode().as_slice())?;
                let used = usage_in(&usage, &rec.owner)?;
                usage.insert(
                    person_bytes(&rec.owner).as_slice(),
                    used.saturating_sub(freed).to_le_bytes().as_slice(),
                )?;
                out.0 += dead.len() as u64;
                out.1 += freed;
            }
        }
        txn.commit()?;
        Ok(out)
    }

    /// Stores membership entries of `folder` uploaded by a device of its owner: they
    /// must extend the stored chain (re-sent ones are duplicates) and verify
    /// (`weft_store::members`); the first names the owner, who must be the person that
    /// claimed the folder here (or claims it now). The member tables follow the new
    /// latest entry. All or nothing; returns how many were new.
    pub fn put_membership(
        &self,
        uploader: &DeviceId,
        folder: &FolderId,
        entries: &[Vec<u8>],
    ) -> Result<usize, RelayError> {
        if entries.len() > MAX_PUT_MEMBERSHIP {
            return Err(RelayError::TooLarge(format!(
                "{} membership entries in one upload (at most {MAX_PUT_MEMBERSHIP})",
                entries.len()
            )));
        }
        let bad = |e: weft_store::StoreError| RelayError::BadEntry(e.to_string());
        let txn = self.db.begin_write()?;
        let person = Self::registered(&txn, uploader)?;
        let rec = Self::folder_for_write(&txn, &person, folder)?;
        if rec.owner != person {
            return Err(not_allowed(
                folder,
                "only the folder's owner changes its members".into(),
            ));
        }
        let chain = chain_in(&txn.open_table(MEMBERSHIP)?, folder)?;
        let mut state = Membership::from_stored_chain(*folder, rec.owner, &chain)
            .map_err(|e| corrupt(&format!("stored membership chain: {e}")))?;
        let before = state.clone();
        let mut new = Vec::new();
        for raw in entries {
            let e = MembershipEntry::decode(raw).map_err(bad)?;
            if e.body.seq >= 1 && e.body.seq <= state.seq {
                if chain.get((e.body.seq - 1) as usize) != Some(raw) {
                    return Err(RelayError::BadEntry(format!(
                        "membership entry #{} forks the stored chain",
                        e.body.seq
                    )));
                }
                continue;
            }
            state = state.apply(raw).map_err(bad)?;
            new.push((state.seq, raw));
        }
        if new.is_empty() {
            return Ok(0);
        }
        {
            let mut t = txn.open_table(MEMBERSHIP)?;
            for (seq, raw) in &new {
                t.insert(membership_key(folder, *seq).as_slice(), raw.as_slice())?;
            }
            let mut members = txn.open_table(MEMBERS)?;
            let mut pf = txn.open_table(PERSON_FOLDERS)?;
            for p in before.members.keys() {
                if !state.members.contains_key(p) {
                    members.remove(key_member(folder, p).as_slice())?;
                    pf.remove(key2(person_bytes(p), &folder.0).as_slice())?;
                }
            }
            for (p, role) in &state.members {
                let b = [role_byte(*role)];
                members.insert(key_member(folder, p).as_slice(), b.as_slice())?;
                pf.insert(key2(person_bytes(p), &folder.0).as_slice(), b.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(new.len())
    }

    /// The membership entries of `folder` after `since`, for the device of a person
    /// the chain ever listed.
    pub fn membership_since(
        &self,
        reader: &DeviceId,
        folder: &FolderId,
        since: u64,
    ) -> Result<Vec<Vec<u8>>, RelayError> {
        if !self.listed(reader, folder)? {
            return Err(not_allowed(
                folder,
                "this device's person is not a member".into(),
            ));
        }
        let chain = self.membership_chain(folder)?;
        Ok(chain
            .into_iter()
            .skip(usize::try_from(since).unwrap_or(usize::MAX))
            .take(MAX_PUT_MEMBERSHIP)
            .collect())
    }

    /// Whether `device`'s person is a member of `folder`, or was one: a removed
    /// member may still read the membership chain, to learn of the removal.
    pub fn listed(&self, device: &DeviceId, folder: &FolderId) -> Result<bool, RelayError> {
        if self.may_read(device, folder)? {
            return Ok(true);
        }
        let person = {
            let r = self.db.begin_read()?;
            person_in(&r.open_table(DEVICES)?, device)?
        };
        let Some(p) = person else {
            return Ok(false);
        };
        Ok(self
            .membership_chain(folder)?
            .iter()
            .any(|raw| MembershipEntry::decode(raw).is_ok_and(|e| e.role_of(&p).is_some())))
    }

    /// The membership chain of `folder`, oldest first (empty: never shared).
    pub fn membership_chain(&self, folder: &FolderId) -> Result<Vec<Vec<u8>>, RelayError> {
        let r = self.db.begin_read()?;
        chain_in(&r.open_table(MEMBERSHIP)?, folder)
    }

    /// The folders `person` is a member of, each with its membership chain's length.
    pub fn shared_with(&self, person: &PersonId) -> Result<Vec<(FolderId, u64)>, RelayError> {
        let folders = self.folders_of(person)?;
        let r = self.db.begin_read()?;
        let t = r.open_table(MEMBERSHIP)?;
        let mut out = Vec::with_capacity(folders.len());
        for f in folders {
            let mut n = 0u64;
            scan_prefix(&t, &f.0, |_, _| {
                n += 1;
                Ok(true)
            })?;
            out.push((f, n));
        }
        Ok(out)
    }

    /// Whether anyone has stored something in `folder` (claimed it).
    pub fn claimed(&self, folder: &FolderId) -> Result<bool, RelayError> {
        let r = self.db.begin_read()?;
        Ok(r.open_table(FOLDERS)?.get(folder.0.as_slice())?.is_some())
    }

    /// Whether `reader`'s person may read `folder`.
    pub fn may_read(&self, reader: &DeviceId, folder: &FolderId) -> Result<bool, RelayError> {
        let r = self.db.begin_read()?;
        let Some(person) = person_in(&r.open_table(DEVICES)?, reader)? else {
            return Ok(false);
        };
        Ok(role_in(&r.open_table(MEMBERS)?, folder, &person)?.is_some())
    }

    /// The folders `person` is a member of, with something stored.
    pub fn folders_of(&self, person: &PersonId) -> Result<Vec<FolderId>, RelayError> {
        let r = self.db.begin_read()?;
        let mut out = Vec::new();
        scan_prefix(
            &r.open_table(PERSON_FOLDERS)?,
            person_bytes(person),
            |k, _| {
                out.push(FolderId(key_16(k, 32)?));
                Ok(true)
            },
        )?;
        Ok(out)
    }

    /// Bytes `person` may still store under the quota (`None`: no quota).
    pub fn room(&self, person: &PersonId) -> Result<Option<u64>, RelayError> {
        Ok(match self.cfg.quota_per_person {
            Some(q) => Some(q.saturating_sub(self.usage(person)?)),
            None => None,
        })
    }

    /// Bytes `person` stores (entries and chunks of the folders it owns).
    pub fn usage(&self, person: &PersonId) -> Result<u64, RelayError> {
        let r = self.db.begin_read()?;
        usage_in(&r.open_table(USAGE)?, person)
    }

    /// Totals for metrics.
    ///
    /// Chunks and their bytes are counted per folder, as they are charged.
    pub fn stats(&self) -> Result<Stats, RelayError> {
        let r = self.db.begin_read()?;
        let folders = r.open_table(FOLDERS)?;
        let mut s = Stats {
            persons: r.open_table(PERSONS)?.len()?,
            folders: folders.len()?,
            ..Stats::default()
        };
        for item in folders.iter()? {
            let (_, v) = item?;
            let rec = FolderRecord::decode(v.value())?;
            s.entries += rec.entries;
            s.chunks += rec.chunks;
            s.stored_bytes += rec.entry_bytes + rec.chunk_bytes;
        }
        Ok(s)
    }

    /// Removes what no record references: blobs left by an upload interrupted before
    /// its commit, temporary files. Returns (files removed, bytes freed).
    ///
    /// Only names this storage writes are touched (`tmp-*` in `blobs/`, and
    /// `blobs/<2 hex>/<64 hex>`); anything else is left alone with a warning.
    pub fn gc(&self) -> Result<(u64, u64), RelayError> {
        let _exclusive = self
            .blob_lock
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let r = self.db.begin_read()?;
        let records = r.open_table(BLOBS)?;
        let mut removed = (0u64, 0u64);
        let remove = |path: &Path, removed: &mut (u64, u64)| -> Result<(), RelayError> {
            let len = fs::symlink_metadata(path).map(|m| m.len()).unwrap_or(0);
            match fs::remove_file(path) {
                Ok(()) => {
                    removed.0 += 1;
                    removed.1 += len;
                    Ok(())
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err(path, e)),
            }
        };
        let list = |dir: &Path| fs::read_dir(dir).map_err(|e| io_err(dir, e));
        for item in list(&self.blobs)? {
            let item = item.map_err(|e| io_err(&self.blobs, e))?;
            let path = item.path();
            let kind = item.file_type().map_err(|e| io_err(&path, e))?;
            let name = item.file_name();
            let name = name.to_string_lossy();
            if kind.is_file() && name.starts_with(TMP_PREFIX) {
                remove(&path, &mut removed)?;
                continue;
            }
            let shard = kind.is_dir()
                && name.len() == 2
                && name
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !shard {
                tracing::warn!(path = %path.display(), "unexpected file in the blob store; left alone");
                continue;
            }
            for blob in list(&path)? {
                let blob = blob.map_err(|e| io_err(&path, e))?;
                let bpath = blob.path();
                let bname = blob.file_name();
                let bname = bname.to_string_lossy();
                let id = match bname.parse::<ChunkId>() {
                    Ok(id)
                        if blob.file_type().is_ok_and(|t| t.is_file())
                            && id.0.to_hex() == *bname
                            && bname.starts_with(&*name) =>
                    {
                        id
                    }
                    _ => {
                        tracing::warn!(path = %bpath.display(), "unexpected file in the blob store; left alone");
                        continue;
                    }
                };
                if records.get(chunk_bytes(&id).as_slice())?.is_none() {
                    remove(&bpath, &mut removed)?;
                }
            }
        }
        if removed.0 > 0 {
            tracing::info!(files = removed.0, bytes = removed.1, "relay gc");
        }
        Ok(removed)
    }
}
