//! `weft verify`: a full check of the store, like `restic check`.
//!
//! Every log entry: canonical encoding, format, signature by a certified device of the
//! folder's owner, unbroken hash chain per author, a body that opens and decodes, and
//! the versions it created present in history. Every cached chunk: its ciphertext
//! hashes to its id. Every index row: its version is in history, is a current head,
//! and has the row's content hash. Problems are collected, not fatal, so one run
//! reports all of them.
use crate::db::{self, CacheLoc, ChainTip, FolderRecord, IndexKind, IndexRow, VersionRecord};
use crate::error::Result;
use crate::log::{Entry, check_chain};
use crate::model::{RelPath, Version};
use crate::store::Store;
use redb::{ReadableDatabase, ReadableTable};
use std::collections::{BTreeMap, HashMap};
use weft_crypto::{ChunkId, DeviceCertificate, DeviceId, Hash};

/// One problem found.
#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub struct Problem {
    /// Where: `log`, `chunk`, `index`, `history`, `folder`.
    pub area: &'static str,
    /// What is wrong.
    pub detail: String,
}

/// What `weft verify` checked and found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Log entries checked.
    pub entries: u64,
    /// Cached chunks checked.
    pub chunks: u64,
    /// Index rows checked.
    pub index_rows: u64,
    /// Every problem.
    pub problems: Vec<Problem>,
}

impl Store {
    /// Checks the whole store.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut rep = VerifyReport::default();
        let r = self.db.begin_read()?;
        let log = r.open_table(db::LOG)?;
        let tips = r.open_table(db::TIPS)?;
        let versions = r.open_table(db::VERSIONS)?;
        let heads = r.open_table(db::HEADS)?;
        let index = r.open_table(db::INDEX)?;
        let chunks = r.open_table(db::CHUNKS)?;
        let devices = r.open_table(db::DEVICES)?;
        let mut certs: HashMap<DeviceId, DeviceCertificate> = HashMap::new();
        for item in devices.iter()? {
            let (k, v) = item?;
            match DeviceCertificate::from_bytes(v.value()) {
                Ok(c) if c.body.device.as_bytes().as_slice() == k.value() => {
                    certs.insert(c.body.device, c);
                }
                _ => rep.problems.push(Problem {
                    area: "devices",
                    detail: "a stored device certificate does not verify".into(),
                }),
            }
        }
        let mut problem =
            |area: &'static str, detail: String| rep.problems.push(Problem { area, detail });

        for folder in self.folders()? {
            let keys = self.epoch_keys(&folder)?;
            // The chain in full, signatures included.
            let membership = match self
                .membership_chain(&folder.id)
                .and_then(|c| crate::members::Membership::from_chain(folder.id, folder.owner, &c))
            {
                Ok(m) => m,
                Err(err) => {
                    problem("members", format!("{}: {err}", folder.name));
                    crate::members::Membership::solo(folder.id, folder.owner)
                }
            };
            let name = &folder.name;
            // Log: per author, chained from 1.
            let mut last: BTreeMap<DeviceId, (u64, Hash)> = BTreeMap::new();
            let mut entries = 0u64;
            db::scan_prefix(&log, &folder.id.0, |k, v| {
                entries += 1;
                let e = match Entry::decode(v) {
                    Ok(e) => e,
                    Err(err) => {
                        problem("log", format!("{name}: undecodable entry: {err}"));
                        return Ok(());
                    }
                };
                let who = format!("{name}: entry {}#{}", e.header.author.short(), e.header.seq);
                if db::key_entry(&folder.id, &e.header.author, e.header.seq) != k
                    || e.header.folder != folder.id
                {
                    problem(
                        "log",
                        format!("{who}: stored under the wrong key or folder"),
                    );
                }
                if let Err(err) = e.verify_signature() {
                    problem("log", format!("{who}: {err}"));
                }
                match certs.get(&e.header.author) {
                    Some(c)
                        if membership.role(&c.body.person).is_some()
                            || membership.cuts.contains_key(&e.header.author) => {}
                    Some(_) => problem(
                        "log",
                        format!("{who}: author is not a device of a member of the folder"),
                    ),
                    None => problem("log", format!("{who}: author device has no certificate")),
                }
                let tip = last.get(&e.header.author).copied();
                if let Err(err) = check_chain(&e, tip) {
                    problem("log", format!("{who}: {err}"));
                }
                last.insert(e.header.author, (e.header.seq, e.hash()));
                let opened = match keys.get(e.header.epoch) {
                    Some(k) => e.open_change(k),
                    None => Err(e.reject(format!(
                        "sealed with key epoch {} this device does not hold",
                        e.header.epoch
                    ))),
                };
                match opened {
                    Ok(ops) => {
                        for p in ops.iter().flat_map(|op| op.paths()) {
                            let k = db::key_version(&folder.id, p, &e.version_id());
                            if versions.get(k.as_slice())?.is_none() {
                                problem(
                                    "history",
                                    format!("{who}: version of {p} missing from history"),
                                );
                            }
                        }
                    }
                    Err(err) => problem("log", format!("{who}: {err}")),
                }
                Ok(())
            })?;
            rep.entries += entries;
            for (author, (seq, hash)) in &last {
                let t: Option<ChainTip> = tips
                    .get(db::key_author(&folder.id, author).as_slice())?
                    .map(|v| db::dec("chain tip", v.value()))
                    .transpose()?;
                if t != Some(ChainTip {
                    seq: *seq,
                    hash: *hash,
                }) {
                    problem(
                        "log",
                        format!(
                            "{name}: chain tip of {} does not match its last entry",
                            author.short()
                        ),
                    );
                }
            }
            // History: every version's entry is in the log.
            db::scan_prefix(&versions, &folder.id.0, |_, v| {
                let rec: VersionRecord = db::dec("version", v)?;
                let id = rec.version.id;
                if log
                    .get(db::key_entry(&folder.id, &id.author, id.seq).as_slice())?
                    .is_none()
                {
                    problem(
                        "history",
                        format!(
                            "{name}: version {}#{} of {} has no log entry",
                            id.author.short(),
                            id.seq,
                            rec.version.path
                        ),
                    );
                }
                Ok(())
            })?;
            // Index: every row names a current head with the same content.
            db::scan_prefix(&index, &folder.id.0, |k, v| {
                rep.index_rows += 1;
                let row: IndexRow = db::dec("index row", v)?;
                let Ok(path) = RelPath::new(k[16..].to_vec()) else {
                    problem("index", format!("{name}: invalid path in index"));
                    return Ok(());
                };
                check_row(&folder, &path, &row, &heads, &versions, &mut problem)
            })?;
        }

        // Chunk cache: every referenced chunk is intact.
        for item in chunks.iter()? {
            let (k, v) = item?;
            rep.chunks += 1;
            let loc: CacheLoc = db::dec("cache location", v.value())?;
            let Ok(id) = <[u8; 32]>::try_from(k.value()) else {
                problem("chunk", "malformed chunk key".into());
                continue;
            };
            let id = ChunkId(Hash(id));
            match self.cache.read(&loc) {
                Ok(ct) => {
                    if id.check(&ct).is_err() {
                        problem(
                            "chunk",
                            format!("chunk {id} in pack {} does not match its id", loc.pack),
                        );
                    }
                }
                Err(e) => problem("chunk", format!("chunk {id}: {e}")),
            }
        }
        Ok(rep)
    }
}

fn check_row<H, V>(
    folder: &FolderRecord,
    path: &RelPath,
    row: &IndexRow,
    heads: &H,
    versions: &V,
    problem: &mut impl FnMut(&'static str, String),
) -> Result<()>
where
    H: ReadableTable<&'static [u8], &'static [u8]>,
    V: ReadableTable<&'static [u8], &'static [u8]>,
{
    let name = &folder.name;
    let hs: Vec<Version> = db::read_heads(heads, &folder.id, path)?;
    if !hs.iter().any(|h| h.id == row.version) {
        problem(
            "index",
            format!("{name}: {path}: indexed version is not a current version"),
        );
    }
    let rec: Option<VersionRecord> = versions
        .get(db::key_version(&folder.id, path, &row.version).as_slice())?
        .map(|v| db::dec("version", v.value()))
        .transpose()?;
    match rec {
        None => problem(
            "index",
            format!("{name}: {path}: indexed version not in history"),
        ),
        Some(rec) => {
            let ok = match row.kind {
                IndexKind::File => db::content_hash(&rec.version.content) == Some(row.hash),
                IndexKind::Dir => rec.version.content == crate::model::Content::Dir,
            };
            if !ok {
                problem(
                    "index",
                    format!("{name}: {path}: index row does not match its version's content"),
                );
            }
        }
    }
    Ok(())
}
