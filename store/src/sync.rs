//! What the node needs from the store to sync: chain tips, entries a peer lacks,
//! accepting received entries, the plan that brings the disk to the merged tree, and
//! chunk access for transfers.
//!
//! Nothing here touches the network: the node calls these and moves bytes.
use crate::db::{self, ChainTip, FolderRecord, IndexKind, IndexRow, VersionRecord};
use crate::error::{Result, StoreError};
use crate::log::Entry;
use crate::merge::{self, TreeEntry};
use crate::model::{ChunkRef, Content, Manifest, RelPath, Version, VersionId};
use crate::store::{Store, accept_entry, now_ms};
use redb::{ReadableDatabase, ReadableTable};
use std::collections::{BTreeMap, HashMap};
use weft_crypto::{ChunkId, DeviceCertificate, DeviceId, FolderId};

/// Most bytes of entries returned by one [`Store::entries_since`] call.
pub const MAX_ENTRIES_BYTES: usize = 4 << 20;
/// Most entries returned by one [`Store::entries_since`] call, however small they are:
/// what a relay takes in one upload.
pub const MAX_ENTRIES_COUNT: usize = 4096;

/// One step that brings a folder's disk to its merged tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create a directory (parents first).
    MakeDir {
        /// The directory.
        path: RelPath,
        /// The version it realises.
        version: VersionId,
    },
    /// Write a file version (a conflict copy when `conflict_of` is set).
    WriteFile {
        /// Where.
        path: RelPath,
        /// The version it realises.
        version: VersionId,
        /// Its content.
        manifest: Manifest,
        /// For a conflict copy: the path it lost at.
        conflict_of: Option<RelPath>,
    },
    /// The disk already holds this content: only the index's version (and the
    /// executable bit, for a file) changes.
    Adopt {
        /// The path.
        path: RelPath,
        /// The version now current.
        version: VersionId,
        /// The file's executable bit in that version (`None` for a directory).
        executable: Option<bool>,
    },
    /// Remove a file or an empty directory that is no longer in the tree.
    Remove {
        /// The path.
        path: RelPath,
        /// What the index says it is.
        kind: IndexKind,
    },
}

/// What accepting a batch of entries did.
#[derive(Clone, Debug, Default)]
pub struct Accepted {
    /// Entries stored.
    pub accepted: usize,
    /// Entries already known (skipped).
    pub duplicates: usize,
    /// Entries refused, with the reason (the rest of that author's batch is skipped).
    pub rejected: Vec<String>,
}

impl Store {
    /// A transaction for bookkeeping that can be re-derived after a crash (chunks saved
    /// during a transfer, index rows of files just written): committed without an
    /// fsync; [`Store::persist`] makes it durable at the end of a round. Losing it costs
    /// a refetch or a rescan that finds the same content, never data.
    pub(crate) fn begin_light(&self) -> Result<redb::WriteTransaction> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::None)
            .map_err(|e| StoreError::decode("transaction", e))?;
        Ok(txn)
    }

    /// Makes every earlier light commit durable.
    pub fn persist(&self) -> Result<()> {
        self.db.begin_write()?.commit()?;
        Ok(())
    }

    /// Each author's last accepted sequence number in `folder`.
    pub fn tips(&self, folder: &FolderId) -> Result<Vec<(DeviceId, u64)>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(db::TIPS)?;
        let mut out = Vec::new();
        db::scan_prefix(&t, &folder.0, |k, v| {
            let author: [u8; 32] = k[16..48]
                .try_into()
                .map_err(|_| StoreError::decode("tip key", "length"))?;
            let tip: ChainTip = db::dec("chain tip", v)?;
            out.push((DeviceId(weft_crypto::PublicKey(author)), tip.seq));
            Ok(())
        })?;
        Ok(out)
    }

    /// Encoded entries of `folder` that a peer with tips `have` lacks, oldest first per
    /// author, up to [`MAX_ENTRIES_BYTES`] and [`MAX_ENTRIES_COUNT`]; the flag says
    /// whether more remain.
    pub fn entries_since(
        &self,
        folder: &FolderId,
        have: &[(DeviceId, u64)],
    ) -> Result<(Vec<Vec<u8>>, bool)> {
        let have: HashMap<DeviceId, u64> = have.iter().copied().collect();
        // Only what others may accept: never a viewer's (or removed member's) own
        // changes, which stay on its devices.
        let allowed = match self.folder(folder) {
            Ok(rec) => Some(self.writable_tips(&rec)?),
            Err(_) => None,
        };
        let mine: Vec<(DeviceId, u64)> = self
            .tips(folder)?
            .into_iter()
            .map(|(a, t)| {
                let cap = allowed
                    .as_ref()
                    .map_or(t, |m| m.get(&a).copied().unwrap_or(0));
                (a, t.min(cap))
            })
            .collect();
        let r = self.db.begin_read()?;
        let log = r.open_table(db::LOG)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (author, tip) in mine {
            let from = have.get(&author).copied().unwrap_or(0) + 1;
            if from > tip {
                continue;
            }
            let start = db::key_entry(folder, &author, from);
            let end = db::key_entry(folder, &author, tip);
            for item in log.range::<&[u8]>(start.as_slice()..=end.as_slice())? {
                let (_, v) = item?;
                let e = v.value();
                let full = bytes + e.len() > MAX_ENTRIES_BYTES || out.len() >= MAX_ENTRIES_COUNT;
                if full && !out.is_empty() {
                    return Ok((out, true));
                }
                bytes += e.len();
                out.push(e.to_vec());
            }
        }
        Ok((out, false))
    }

    /// Verifies and stores received entries of one folder in one transaction. An
    /// entry that fails verification is refused with its reason, and the rest of its
    /// author's entries in the batch are skipped (they would not chain).
    pub fn accept_entries(&self, folder: &FolderRecord, entries: &[Vec<u8>]) -> Result<Accepted> {
        let keys = self.epoch_keys(folder)?;
        let membership = self.membership(folder)?;
        let now = now_ms();
        let mut out = Accepted::default();
        let mut refused: Vec<DeviceId> = Vec::new();
        let txn = self.db.begin_write()?;
        for raw in entries {
            let e = match Entry::decode(raw) {
                Ok(e) => e,
                Err(err) => {
                    out.rejected.push(err.to_string());
                    continue;
                }
            };
            if e.header.folder != folder.id {
                out.rejected
                    .push(e.reject("entry of another folder".into()).to_string());
                continue;
            }
            if refused.contains(&e.header.author) {
                continue;
            }
            let known = {
                let log = txn.open_table(db::LOG)?;
                log.get(db::key_entry(&folder.id, &e.header.author, e.header.seq).as_slice())?
                    .map(|v| v.value() == raw.as_slice())
            };
            match known {
                Some(true) => {
                    out.duplicates += 1;
                    continue;
                }
                Some(false) => {
                    out.rejected.push(
                        e.reject(
                            "fork: a different entry with this sequence number is already accepted"
                                .into(),
                        )
                        .to_string(),
                    );
                    refused.push(e.header.author);
                    continue;
                }
                None => {}
            }
            // The author must be a certified device of a person who may write here
            // (an owner or editor, or one whose right ended after this entry).
            let person = {
                let devices = txn.open_table(db::DEVICES)?;
                devices
                    .get(e.header.author.as_bytes().as_slice())?
                    .and_then(|v| DeviceCertificate::from_bytes(v.value()).ok())
                    .map(|c| c.body.person)
            };
            let why = match person {
                None => Some("author is not a certified device"),
                Some(p)
                    if membership.role(&p).is_none()
                        && !membership.cuts.contains_key(&e.header.author) =>
                {
                    Some("author is not a device of a member of this folder")
                }
                Some(p) if !membership.may_write(&p, &e.header.author, e.header.seq) => {
                    Some("author's person may not write in this folder (a viewer, or removed)")
                }
                Some(_) => None,
            };
            if let Some(why) = why {
                out.rejected.push(e.reject(why.into()).to_string());
                refused.push(e.header.author);
                continue;
            }
            let Some(keys) = keys.get(e.header.epoch) else {
                out.rejected.push(
                    e.reject(format!(
                        "sealed with key epoch {} this device does not hold",
                        e.header.epoch
                    ))
                    .to_string(),
                );
                refused.push(e.header.author);
                continue;
            };
            match accept_entry(&txn, &e, keys, now) {
                Ok(_) => out.accepted += 1,
                Err(err) => {
                    out.rejected.push(err.to_string());
                    refused.push(e.header.author);
                    // accept_entry checks before writing, except a delta whose base is
                    // unknown, which fails before anything is stored too.
                }
            }
        }
        txn.commit()?;
        Ok(out)
    }

    /// The merged tree of a folder, derived from its heads.
    pub fn tree(&self, folder: &FolderId) -> Result<BTreeMap<RelPath, TreeEntry>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(db::HEADS)?;
        let mut heads: Vec<(RelPath, Vec<Version>)> = Vec::new();
        db::scan_prefix(&t, &folder.0, |k, v| {
            heads.push((RelPath::new(k[16..].to_vec())?, db::dec("heads", v)?));
            Ok(())
        })?;
        Ok(merge::derive_tree(
            heads.iter().map(|(p, h)| (p, h.as_slice())),
        ))
    }

    /// The steps that bring the disk (as the index knows it) to the merged tree.
    pub fn plan(&self, folder: &FolderRecord) -> Result<Vec<Action>> {
        let tree = self.tree(&folder.id)?;
        let index = self.index_rows(folder)?;
        let r = self.db.begin_read()?;
        let versions = r.open_table(db::VERSIONS)?;
        let mut dirs = Vec::new();
        let mut files = Vec::new();
        let mut removes = Vec::new();
        for (path, te) in &tree {
            let row = index.get(path);
            match &te.content {
                Content::Dir => match row {
                    Some(r) if r.kind == IndexKind::Dir && r.version == te.version => {}
                    Some(r) if r.kind == IndexKind::Dir => files.push(Action::Adopt {
                        path: path.clone(),
                        version: te.version,
                        executable: None,
                    }),
                    _ => dirs.push(Action::MakeDir {
                        path: path.clone(),
                        version: te.version,
                    }),
                },
                Content::File {
                    hash, executable, ..
                } => match row {
                    Some(r) if r.kind == IndexKind::File && r.version == te.version => {}
                    Some(r)
                        if r.kind == IndexKind::File
                            && r.hash == *hash
                            && te.conflict_of.is_none() =>
                    {
                        files.push(Action::Adopt {
                            path: path.clone(),
                            version: te.version,
                            executable: Some(*executable),
                        })
                    }
                    _ => {
                        let origin = te.conflict_of.as_ref().unwrap_or(path);
                        let manifest = crate::store::version_manifest(
                            &versions,
                            &folder.id,
                            origin,
                            &te.version,
                        )?;
                        files.push(Action::WriteFile {
                            path: path.clone(),
                            version: te.version,
                            manifest,
                            conflict_of: te.conflict_of.clone(),
                        });
                    }
                },
                Content::Deleted => {}
            }
        }
        // A conflict copy already written, and recorded by a scan, is a real path now.
        files.retain(|a| match a {
            Action::WriteFile {
                path,
                conflict_of: Some(_),
                manifest,
                ..
            } => index.get(path).is_none_or(|r| r.hash != manifest.hash),
            _ => true,
        });
        for (path, row) in index.iter().rev() {
            if tree.contains_key(path) {
                continue;
            }
            // A directory with live children stays (it is implied by them).
            if row.kind == IndexKind::Dir
                && tree
                    .range(path.clone()..)
                    .take_while(|(p, _)| p.starts_with(path))
                    .next()
                    .is_some()
            {
                continue;
            }
            removes.push(Action::Remove {
                path: path.clone(),
                kind: row.kind,
            });
        }
        // Conflict copies first: a losing version may exist only in the file the winner
        // is about to replace, so its copy must be written while it can still be read.
        files.sort_by_key(|a| {
            !matches!(
                a,
                Action::WriteFile {
                    conflict_of: Some(_),
                    ..
                }
            )
        });
        dirs.extend(files);
        dirs.extend(removes);
        Ok(dirs)
    }

    /// Stores received chunks (each checked against its id) in the cache, in one
    /// transaction; a chunk that does not match its id is refused.
    pub fn put_chunks(
        &self,
        writer: &mut crate::cache::PackWriter,
        chunks: &[(ChunkId, Vec<u8>)],
    ) -> Result<()> {
        for (id, ct) in chunks {
            id.check(ct)?;
        }
        let txn = self.begin_light()?;
        {
            let mut t = txn.open_table(db::CHUNKS)?;
            for (id, ct) in chunks {
                let k = db::chunk_key(id);
                if t.get(k.as_slice())?.is_some() {
                    continue;
                }
                let loc = writer.append(ct)?;
                t.insert(k.as_slice(), db::enc(&loc).as_slice())?;
            }
        }
        writer.flush()?;
        txn.commit()?;
        Ok(())
    }

    /// Registers a folder received from another device of the same person (pairing):
    /// same id, secret and owner, rooted at `root` here.
    pub fn import_folder(
        &self,
        shared: &SharedFolder,
        root: &std::path::Path,
    ) -> Result<FolderRecord> {
        std::fs::create_dir_all(root).map_err(|e| StoreError::io(root, e))?;
        let canon = std::fs::canonicalize(root).map_err(|e| StoreError::io(root, e))?;
        for f in self.folders()? {
            if f.id == shared.id {
                return Ok(f);
            }
            let other = f.root_path();
            if canon.starts_with(&other) || other.starts_with(&canon) {
                return Err(StoreError::BadFolderPath {
                    path: root.to_path_buf(),
                    reason: format!("it overlaps folder {:?}", f.name),
                });
            }
        }
        use std::os::unix::ffi::OsStrExt;
        let rec = FolderRecord {
            id: shared.id,
            name: shared.name.clone(),
            root: canon.as_os_str().as_bytes().to_vec(),
            secret: shared.secret.clone(),
            owner: shared.owner,
            created_ms: now_ms(),
            last_scan_ms: None,
        };
        crate::scan::write_marker(&canon, &rec.id)?;
        let txn = self.db.begin_write()?;
        txn.open_table(db::FOLDERS)?
            .insert(rec.id.0.as_slice(), db::enc(&rec).as_slice())?;
        txn.commit()?;
        Ok(rec)
    }

    /// Sets a path's index row (after a remote version was written to disk).
    pub fn set_index_row(
        &self,
        folder: &FolderId,
        path: &RelPath,
        row: Option<&IndexRow>,
    ) -> Result<()> {
        let txn = self.begin_light()?;
        {
            let mut t = txn.open_table(db::INDEX)?;
            let k = db::key_path(folder, path);
            match row {
                Some(r) => {
                    t.insert(k.as_slice(), db::enc(r).as_slice())?;
                }
                None => {
                    t.remove(k.as_slice())?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// A path's index row.
    pub fn index_row(&self, folder: &FolderId, path: &RelPath) -> Result<Option<IndexRow>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(db::INDEX)?;
        t.get(db::key_path(folder, path).as_slice())?
            .map(|v| db::dec("index row", v.value()))
            .transpose()
    }

    /// Every known device certificate.
    pub fn devices(&self) -> Result<Vec<DeviceCertificate>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(db::DEVICES)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (_, v) = item?;
            out.push(DeviceCertificate::from_bytes(v.value())?);
        }
        Ok(out)
    }

    /// Whether `device` is a certified device of this person.
    pub fn is_my_device(&self, device: &DeviceId) -> Result<bool> {
        Ok(self
            .device_cert(device)?
            .is_some_and(|c| c.body.person == self.id.person_id()))
    }

    /// The chunks the file versions of one of `folder`'s stored entries (encoded)
    /// consist of: what must be uploaded with it for another device to rebuild them.
    /// The entry is opened with the folder's keys; each version's manifest comes from
    /// the versions table.
    pub fn chunks_of_entry(&self, folder: &FolderRecord, raw: &[u8]) -> Result<Vec<ChunkRef>> {
        let entry = Entry::decode(raw)?;
        let version = entry.version_id();
        let mut out = Vec::new();
        let keys = self.epoch_keys(folder)?;
        let keys = keys.get(entry.header.epoch).ok_or_else(|| {
            entry.reject(format!(
                "sealed with key epoch {} this device does not hold",
                entry.header.epoch
            ))
        })?;
        for op in entry.open_change(keys)? {
            let path = match &op {
                crate::log::Op::Put { path, .. } => path,
                crate::log::Op::Move { to, .. } => to,
                _ => continue,
            };
            out.extend(self.manifest(&folder.id, path, &version)?.chunks);
        }
        Ok(out)
    }

    /// A stored version's record.
    pub fn version_record(
        &self,
        folder: &FolderId,
        path: &RelPath,
        id: &VersionId,
    ) -> Result<Option<VersionRecord>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(db::VERSIONS)?;
        t.get(db::key_version(folder, path, id).as_slice())?
            .map(|v| db::dec("version", v.value()))
            .transpose()
    }
}

/// What a device hands a newly paired device about one folder.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SharedFolder {
    /// The folder id.
    pub id: FolderId,
    /// Its name.
    pub name: String,
    /// The current secret.
    pub secret: weft_crypto::FolderSecret,
    /// Its owner.
    pub owner: weft_crypto::PersonId,
}

impl From<&FolderRecord> for SharedFolder {
    fn from(f: &FolderRecord) -> Self {
        SharedFolder {
            id: f.id,
            name: f.name.clone(),
            secret: f.secret.clone(),
            owner: f.owner,
        }
    }
}

impl Store {
    /// Adds a relay (a multiaddr ending in `/p2p/<id>`); adding it again is harmless.
    /// Returns whether it is new.
    pub fn add_relay(&self, addr: &str) -> Result<bool> {
        let txn = self.db.begin_write()?;
        let new = txn.open_table(db::RELAYS)?.insert(addr, ())?.is_none();
        txn.commit()?;
        Ok(new)
    }

    /// The furthest `relay` has shown it holds each author's chain of `folder`.
    pub fn relay_marks(&self, relay: &str, folder: &FolderId) -> Result<HashMap<DeviceId, u64>> {
        let prefix = format!("{relay}/{folder}/");
        let r = self.db.begin_read()?;
        let t = r.open_table(db::RELAY_MARKS)?;
        let mut out = HashMap::new();
        for row in t.range(prefix.as_str()..)? {
            let (k, v) = row?;
            let Some(author) = k.value().strip_prefix(prefix.as_str()) else {
                break;
            };
            if let Ok(a) = author.parse::<DeviceId>() {
                out.insert(a, v.value());
            }
        }
        Ok(out)
    }

    /// Raises `relay`'s marks for `folder` to `seen` (never lowers them).
    pub fn raise_relay_marks(
        &self,
        relay: &str,
        folder: &FolderId,
        seen: &[(DeviceId, u64)],
    ) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(db::RELAY_MARKS)?;
            for (author, seq) in seen {
                let k = format!("{relay}/{folder}/{author}");
                let old = t.get(k.as_str())?.map(|v| v.value()).unwrap_or(0);
                if *seq > old {
                    t.insert(k.as_str(), *seq)?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes a relay; returns whether it was there.
    pub fn remove_relay(&self, addr: &str) -> Result<bool> {
        let txn = self.db.begin_write()?;
        let had = txn.open_table(db::RELAYS)?.remove(addr)?.is_some();
        txn.commit()?;
        Ok(had)
    }

    /// The relays this device uses.
    pub fn relays(&self) -> Result<Vec<String>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(db::RELAYS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            out.push(row?.0.value().to_string());
        }
        Ok(out)
    }

    /// Remembers where a device was last reachable.
    pub fn remember_addrs(&self, device: &DeviceId, addrs: &[String]) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(db::PEER_ADDRS)?.insert(
            device.as_bytes().as_slice(),
            db::enc(&addrs.to_vec()).as_slice(),
        )?;
        txn.commit()?;
        Ok(())
    }

    /// Every remembered device address.
    pub fn peer_addrs(&self) -> Result<Vec<(DeviceId, Vec<String>)>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(db::PEER_ADDRS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            let key: [u8; 32] = k
                .value()
                .try_into()
                .map_err(|_| StoreError::decode("peer key", "length"))?;
            out.push((
                DeviceId(weft_crypto::PublicKey(key)),
                db::dec("peer addresses", v.value())?,
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::log::Op;
    use crate::model::VersionVector;

    /// However small its entries, an answer holds at most [`MAX_ENTRIES_COUNT`] of them
    /// (a relay refuses larger uploads), says more remain, and the rest follows.
    #[test]
    fn entries_since_stops_at_a_count_as_well_as_at_a_size() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, root) = crate::testing::scratch(tmp.path());
        let folder = store.add_folder(&root, Some("f")).unwrap();
        let keys = store.keys(&folder);
        let me = store.id.device_id();
        let n = MAX_ENTRIES_COUNT + 10;
        let txn = store.db.begin_write().unwrap();
        for i in 0..n {
            crate::store::append_local(&txn, &store.id, &folder.id, &keys, 0, |seq| {
                let mut vv = VersionVector::default();
                vv.set(me, seq);
                Ok(vec![Op::Mkdir {
                    path: RelPath::new(format!("d{i}").into_bytes())?,
                    vv,
                }])
            })
            .unwrap();
        }
        txn.commit().unwrap();

        let (first, more) = store.entries_since(&folder.id, &[]).unwrap();
        assert_eq!(first.len(), MAX_ENTRIES_COUNT);
        assert!(more);
        assert!(first.iter().map(Vec::len).sum::<usize>() < MAX_ENTRIES_BYTES);
        let (rest, more) = store
            .entries_since(&folder.id, &[(me, MAX_ENTRIES_COUNT as u64)])
            .unwrap();
        assert_eq!(rest.len(), n - MAX_ENTRIES_COUNT);
        assert!(!more);
    }
}
