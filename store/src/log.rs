//! The signed, hash-chained, encrypted change log.
//!
//! An entry is a clear **header** (format, folder, author, sequence, hash of the
//! author's previous entry, kind, key epoch, time), a **body** sealed with the folder's
//! metadata key with the encoded header as associated data (so a body cannot be moved
//! under another header), and the author device's ed25519 **signature** over
//! header ‖ body. The entry's hash is BLAKE3 of its whole encoding; the next entry of
//! the same author names it in `prev`, so each author's entries form a chain, and two
//! entries with one author and one sequence number are a detectable fork.
//!
//! The body's operations ([`Op`]) are wire types: they are converted into the domain
//! [`Version`]s that the merge uses by [`Op::versions`], with manifests resolved against
//! the store for deltas.
use crate::error::{Result, StoreError};
use crate::model::{ChunkRef, Content, Manifest, RelPath, Version, VersionId, VersionVector};
use serde::{Deserialize, Serialize};
use weft_crypto::{DeviceId, FolderId, FolderKeys, Hash, SecretKey, Signature};

/// The entry format this code writes and reads.
pub const FORMAT: u8 = 1;
/// The largest encoded entry accepted; anything larger is refused before decoding.
/// It must fit one sync message (`node::protocol::MAX_SYNC_MESSAGE`).
pub const MAX_ENTRY_LEN: usize = 8 << 20;
/// The most chunks one file's manifest may list: at ~70 bytes a chunk reference it
/// fits an entry. Files over 4 GiB are cut into chunks of 1 MiB on average
/// ([`crate::chunker::LARGE`]), so this is a file of about 100 GiB; a larger one is
/// skipped with a warning (manifests split across entries would lift this).
pub const MAX_MANIFEST_CHUNKS: usize = 100_000;
const SIG_CONTEXT: &str = "log-entry";

/// What an entry's body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A change to files (body sealed with the metadata key).
    Change,
}

/// The clear part of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryHeader {
    /// [`FORMAT`].
    pub format: u8,
    /// The folder whose log this is.
    pub folder: FolderId,
    /// The device that wrote it.
    pub author: DeviceId,
    /// 1 for the author's first entry in this folder, then +1 each.
    pub seq: u64,
    /// Hash of the author's previous entry ([`Hash::ZERO`] for seq 1).
    pub prev: Hash,
    /// What the body is.
    pub kind: EntryKind,
    /// The folder secret epoch whose metadata key sealed the body.
    pub epoch: u32,
    /// When it was written, Unix ms (the author's clock).
    pub time_ms: u64,
}

/// One signed log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The clear header.
    pub header: EntryHeader,
    /// The sealed body.
    pub body: Vec<u8>,
    /// The author's signature over header ‖ body.
    pub signature: Signature,
}

/// A file operation, as it travels in an entry body. Variants are only ever appended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// A new version of a file.
    Put {
        /// The file.
        path: RelPath,
        /// The new version's vector.
        vv: VersionVector,
        /// Its content.
        manifest: WireManifest,
    },
    /// A directory exists.
    Mkdir {
        /// The directory.
        path: RelPath,
        /// The new version's vector.
        vv: VersionVector,
    },
    /// A file or directory was deleted.
    Delete {
        /// The path.
        path: RelPath,
        /// The tombstone's vector.
        vv: VersionVector,
    },
    /// A file moved: a tombstone at `from` and a new version at `to`, atomically, with the
    /// same chunks (the manifest is a delta that keeps every chunk of the old version).
    Move {
        /// The old path.
        from: RelPath,
        /// The tombstone's vector.
        from_vv: VersionVector,
        /// The new path.
        to: RelPath,
        /// The new version's vector.
        to_vv: VersionVector,
        /// The content at `to`.
        manifest: WireManifest,
    },
}

/// A manifest on the wire: whole, or as a delta against a version the author had.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireManifest {
    /// The whole chunk list.
    Full(Manifest),
    /// Ranges of a base version's chunk list kept, new chunks inserted.
    Delta {
        /// The path of the base version.
        base_path: RelPath,
        /// The base version.
        base: VersionId,
        /// New size.
        size: u64,
        /// New mtime.
        mtime_ns: i64,
        /// New executable bit.
        executable: bool,
        /// New content hash.
        hash: Hash,
        /// How to build the new chunk list from the base's.
        edits: Vec<DeltaEdit>,
    },
}

/// One step of a manifest delta.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeltaEdit {
    /// Keep `count` chunks of the base starting at `start`.
    Keep {
        /// First base chunk index.
        start: u32,
        /// How many.
        count: u32,
    },
    /// Insert these chunks.
    Insert(Vec<ChunkRef>),
}

impl WireManifest {
    /// Encodes `new` as a delta against `base` when that is smaller than the whole list.
    /// The delta keeps the longest common prefix and suffix of the chunk lists and
    /// re-uses any base chunk in between by position: a local edit costs a handful of
    /// entries whatever the file size.
    pub fn encode(new: &Manifest, base: Option<(&RelPath, VersionId, &Manifest)>) -> WireManifest {
        let Some((base_path, base_id, old)) = base else {
            return WireManifest::Full(new.clone());
        };
        let mut index = std::collections::HashMap::with_capacity(old.chunks.len());
        for (i, c) in old.chunks.iter().enumerate() {
            index.entry(c.id).or_insert(i as u32);
        }
        let mut edits: Vec<DeltaEdit> = Vec::new();
        for c in &new.chunks {
            match index.get(&c.id) {
                Some(&i) => {
                    if let Some(DeltaEdit::Keep { start, count }) = edits.last_mut()
                        && *start + *count == i
                    {
                        *count += 1;
                        continue;
                    }
                    edits.push(DeltaEdit::Keep { start: i, count: 1 });
                }
                None => {
                    if let Some(DeltaEdit::Insert(v)) = edits.last_mut() {
                        v.push(*c);
                    } else {
                        edits.push(DeltaEdit::Insert(vec![*c]));
                    }
                }
            }
        }
        let inserted: usize = edits
            .iter()
            .map(|e| match e {
                DeltaEdit::Insert(v) => v.len(),
                DeltaEdit::Keep { .. } => 0,
            })
            .sum();
        // A delta is worth it when it saves most of the list.
        if edits.len() + inserted >= new.chunks.len() {
            return WireManifest::Full(new.clone());
        }
        WireManifest::Delta {
            base_path: base_path.clone(),
            base: base_id,
            size: new.size,
            mtime_ns: new.mtime_ns,
            executable: new.executable,
            hash: new.hash,
            edits,
        }
    }

    /// Resolves to a full manifest, looking up the base with `base_of` for a delta.
    /// Checks that the result is consistent: chunk lengths add up to the size and the
    /// content hash matches, so a forged delta cannot produce a different file.
    pub fn resolve(
        &self,
        base_of: impl FnOnce(&RelPath, &VersionId) -> Result<Manifest>,
    ) -> Result<Manifest> {
        let m = match self {
            WireManifest::Full(m) => m.clone(),
            WireManifest::Delta {
                base_path,
                base,
                size,
                mtime_ns,
                executable,
                hash,
                edits,
            } => {
                let old = base_of(base_path, base)?;
                let mut chunks = Vec::new();
                for e in edits {
                    match e {
                        DeltaEdit::Keep { start, count } => {
                            let s = *start as usize;
                            let range = old
                                .chunks
                                .get(s..s.saturating_add(*count as usize))
                                .ok_or_else(|| {
                                    StoreError::decode(
                                        "manifest delta",
                                        "keeps chunks the base does not have",
                                    )
                                })?;
                            chunks.extend_from_slice(range);
                        }
                        DeltaEdit::Insert(v) => chunks.extend_from_slice(v),
                    }
                }
                Manifest {
                    size: *size,
                    mtime_ns: *mtime_ns,
                    executable: *executable,
                    hash: *hash,
                    chunks,
                }
            }
        };
        if m.chunks.len() > MAX_MANIFEST_CHUNKS {
            return Err(StoreError::decode("manifest", "lists too many chunks"));
        }
        if m.chunks
            .iter()
            .any(|c| c.len == 0 || c.len as usize > crate::chunker::MAX_CHUNK)
        {
            return Err(StoreError::decode(
                "manifest",
                "a chunk is empty or larger than any chunk weft cuts",
            ));
        }
        let total: u64 = m.chunks.iter().map(|c| u64::from(c.len)).sum();
        if total != m.size {
            return Err(StoreError::decode(
                "manifest",
                "chunk lengths do not add up to the size",
            ));
        }
        if Manifest::content_hash(&m.chunks) != m.hash {
            return Err(StoreError::decode(
                "manifest",
                "content hash does not match the chunk list",
            ));
        }
        Ok(m)
    }
}

impl Op {
    /// The paths this operation touches.
    pub fn paths(&self) -> Vec<&RelPath> {
        match self {
            Op::Put { path, .. } | Op::Mkdir { path, .. } | Op::Delete { path, .. } => vec![path],
            Op::Move { from, to, .. } => vec![from, to],
        }
    }

    /// A short human name of the operation.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Put { .. } => "put",
            Op::Mkdir { .. } => "mkdir",
            Op::Delete { .. } => "delete",
            Op::Move { .. } => "move",
        }
    }

    /// The versions this operation creates, with manifests resolved.
    pub fn versions(
        &self,
        id: VersionId,
        mut base_of: impl FnMut(&RelPath, &VersionId) -> Result<Manifest>,
    ) -> Result<Vec<(Version, Option<Manifest>)>> {
        let check = |vv: &VersionVector| -> Result<()> {
            if vv.get(&id.author) != id.seq {
                return Err(StoreError::decode(
                    "operation",
                    "version vector does not carry the entry's sequence",
                ));
            }
            Ok(())
        };
        Ok(match self {
            Op::Put { path, vv, manifest } => {
                check(vv)?;
                let m = manifest.resolve(&mut base_of)?;
                vec![(
                    Version {
                        path: path.clone(),
                        id,
                        vv: vv.clone(),
                        content: m.content(),
                    },
                    Some(m),
                )]
            }
            Op::Mkdir { path, vv } => {
                check(vv)?;
                vec![(
                    Version {
                        path: path.clone(),
                        id,
                        vv: vv.clone(),
                        content: Content::Dir,
                    },
                    None,
                )]
            }
            Op::Delete { path, vv } => {
                check(vv)?;
                vec![(
                    Version {
                        path: path.clone(),
                        id,
                        vv: vv.clone(),
                        content: Content::Deleted,
                    },
                    None,
                )]
            }
            Op::Move {
                from,
                from_vv,
                to,
                to_vv,
                manifest,
            } => {
                check(from_vv)?;
                check(to_vv)?;
                if from == to {
                    return Err(StoreError::decode("operation", "move onto itself"));
                }
                let m = manifest.resolve(&mut base_of)?;
                vec![
                    (
                        Version {
                            path: from.clone(),
                            id,
                            vv: from_vv.clone(),
                            content: Content::Deleted,
                        },
                        None,
                    ),
                    (
                        Version {
                            path: to.clone(),
                            id,
                            vv: to_vv.clone(),
                            content: m.content(),
                        },
                        Some(m),
                    ),
                ]
            }
        })
    }
}

/// The plaintext of a [`EntryKind::Change`] body: one or more operations on distinct
/// paths, applied atomically. Batching many operations into one entry (a scan's new
/// files, a `git checkout`) costs one signature and one header instead of one each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeBody {
    /// The operations; no path appears twice.
    pub ops: Vec<Op>,
}

/// The most operations one entry carries.
pub const MAX_OPS_PER_ENTRY: usize = 1024;

fn header_bytes(h: &EntryHeader) -> Vec<u8> {
    crate::db::enc(h)
}

fn signed_bytes(h: &[u8], body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(h.len() + body.len() + 8);
    m.extend_from_slice(&(h.len() as u64).to_le_bytes());
    m.extend_from_slice(h);
    m.extend_from_slice(body);
    m
}

impl Entry {
    /// Writes and signs a change entry.
    pub fn new_change(
        header: EntryHeader,
        ops: &[Op],
        keys: &FolderKeys,
        device: &SecretKey,
    ) -> Entry {
        let hb = header_bytes(&header);
        let plain = crate::db::enc(&ChangeBody { ops: ops.to_vec() });
        let body = keys.seal_metadata(&hb, &plain);
        let signature = device.sign(SIG_CONTEXT, &signed_bytes(&hb, &body));
        Entry {
            header,
            body,
            signature,
        }
    }

    /// The canonical encoding (what is stored, sent and hashed).
    pub fn encode(&self) -> Vec<u8> {
        crate::db::enc(self)
    }

    /// Decodes, refusing oversized input before parsing.
    pub fn decode(b: &[u8]) -> Result<Entry> {
        if b.len() > MAX_ENTRY_LEN {
            return Err(StoreError::decode(
                "log entry",
                format!("{} bytes is over the limit", b.len()),
            ));
        }
        let e: Entry = postcard::from_bytes(b).map_err(|e| StoreError::decode("log entry", e))?;
        if e.encode() != b {
            return Err(StoreError::decode("log entry", "non-canonical encoding"));
        }
        Ok(e)
    }

    /// The entry's hash: BLAKE3 of its encoding.
    pub fn hash(&self) -> Hash {
        Hash::of(&self.encode())
    }

    /// Checks the format and the author's signature (not the chain: see [`check_chain`]).
    pub fn verify_signature(&self) -> Result<()> {
        if self.header.format != FORMAT {
            return Err(self.reject(format!("unknown format {}", self.header.format)));
        }
        if self.header.seq == 0 {
            return Err(self.reject("sequence 0".into()));
        }
        let hb = header_bytes(&self.header);
        self.header
            .author
            .0
            .verify(SIG_CONTEXT, &signed_bytes(&hb, &self.body), &self.signature)
            .map_err(|e| self.reject(e.to_string()))
    }

    /// Opens the body of a change entry.
    pub fn open_change(&self, keys: &FolderKeys) -> Result<Vec<Op>> {
        if self.header.kind != EntryKind::Change {
            return Err(self.reject("not a change entry".into()));
        }
        if keys.folder() != self.header.folder || keys.epoch() != self.header.epoch {
            return Err(self.reject("sealed for another folder or key epoch".into()));
        }
        let plain = keys
            .open_metadata(&header_bytes(&self.header), &self.body)
            .map_err(|e| self.reject(e.to_string()))?;
        let body: ChangeBody = postcard::from_bytes(&plain)
            .map_err(|e| self.reject(format!("malformed body: {e}")))?;
        if body.ops.is_empty() || body.ops.len() > MAX_OPS_PER_ENTRY {
            return Err(self.reject(format!("{} operations in one entry", body.ops.len())));
        }
        let mut seen = std::collections::HashSet::new();
        for p in body.ops.iter().flat_map(Op::paths) {
            if !seen.insert(p) {
                return Err(self.reject(format!("path {p} appears twice in one entry")));
            }
        }
        Ok(body.ops)
    }

    /// The version id the entry's operation creates.
    pub fn version_id(&self) -> VersionId {
        VersionId {
            author: self.header.author,
            seq: self.header.seq,
        }
    }

    /// A rejection error naming this entry.
    pub fn reject(&self, reason: String) -> StoreError {
        StoreError::BadEntry {
            author: self.header.author.to_string(),
            seq: self.header.seq,
            reason,
        }
    }
}

/// The distinct authors of encoded entries (undecodable ones skipped), sorted: whose
/// certificates travel with them.
pub fn authors(entries: &[Vec<u8>]) -> Vec<DeviceId> {
    let mut a: Vec<DeviceId> = entries
        .iter()
        .filter_map(|e| Entry::decode(e).ok())
        .map(|e| e.header.author)
        .collect();
    a.sort();
    a.dedup();
    a
}

/// Checks that `entry` extends its author's chain, whose last accepted entry is `tip`
/// (`None` if none yet).
pub fn check_chain(entry: &Entry, tip: Option<(u64, Hash)>) -> Result<()> {
    let (want_seq, want_prev) = match tip {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, Hash::ZERO),
    };
    if entry.header.seq != want_seq {
        return Err(entry.reject(format!("expected sequence {want_seq}")));
    }
    if entry.header.prev != want_prev {
        return Err(entry.reject("previous-entry hash does not match the chain".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_crypto::{ChunkId, ChunkKey, FolderSecret};

    fn chunk(n: u8, len: u32) -> ChunkRef {
        ChunkRef {
            id: ChunkId(Hash([n; 32])),
            key: ChunkKey([n.wrapping_add(100); 32]),
            len,
        }
    }

    fn manifest(chunks: Vec<ChunkRef>) -> Manifest {
        Manifest {
            size: chunks.iter().map(|c| u64::from(c.len)).sum(),
            mtime_ns: 7,
            executable: false,
            hash: Manifest::content_hash(&chunks),
            chunks,
        }
    }

    fn setup() -> (SecretKey, FolderKeys, EntryHeader, Op) {
        let dev = SecretKey::from_seed(&[1; 32]);
        let folder = FolderId([2; 16]);
        let keys = FolderSecret {
            epoch: 0,
            bytes: [3; 32],
        }
        .keys(&folder);
        let author = weft_crypto::DeviceId(dev.public());
        let mut vv = VersionVector::new();
        vv.set(author, 1);
        let header = EntryHeader {
            format: FORMAT,
            folder,
            author,
            seq: 1,
            prev: Hash::ZERO,
            kind: EntryKind::Change,
            epoch: 0,
            time_ms: 1000,
        };
        let op = Op::Put {
            path: RelPath::new("a/b.txt").unwrap(),
            vv,
            manifest: WireManifest::Full(manifest(vec![chunk(1, 10)])),
        };
        (dev, keys, header, op)
    }

    #[test]
    fn entry_round_trip_and_chain() {
        let (dev, keys, header, op) = setup();
        let e = Entry::new_change(header, std::slice::from_ref(&op), &keys, &dev);
        let d = Entry::decode(&e.encode()).unwrap();
        assert_eq!(d, e);
        d.verify_signature().unwrap();
        assert_eq!(d.open_change(&keys).unwrap(), vec![op]);
        check_chain(&d, None).unwrap();
        assert!(
            check_chain(&d, Some((1, e.hash()))).is_err(),
            "a replayed entry is refused"
        );
        assert!(check_chain(&d, Some((0, Hash([9; 32])))).is_err());
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let (dev, keys, header, op) = setup();
        let bytes = Entry::new_change(header, std::slice::from_ref(&op), &keys, &dev).encode();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            let accepted = Entry::decode(&b)
                .and_then(|e| e.verify_signature().map(|_| e))
                .and_then(|e| e.open_change(&keys));
            assert!(accepted.is_err(), "flipping byte {i} was accepted");
        }
    }

    #[test]
    fn wrong_key_or_folder_is_rejected() {
        let (dev, keys, header, op) = setup();
        let e = Entry::new_change(header, std::slice::from_ref(&op), &keys, &dev);
        let other = FolderSecret {
            epoch: 0,
            bytes: [4; 32],
        }
        .keys(&e.header.folder);
        assert!(e.open_change(&other).is_err());
        let other_folder = FolderSecret {
            epoch: 0,
            bytes: [3; 32],
        }
        .keys(&FolderId([5; 16]));
        assert!(e.open_change(&other_folder).is_err());
        assert!(Entry::decode(&vec![0u8; MAX_ENTRY_LEN + 1]).is_err());
        assert!(Entry::decode(&[]).is_err());
    }

    #[test]
    fn delta_keeps_unchanged_chunks() {
        let old = manifest((0..100).map(|i| chunk(i, 1000)).collect());
        let mut new_chunks: Vec<ChunkRef> = (0..100).map(|i| chunk(i, 1000)).collect();
        new_chunks[50] = chunk(200, 1000);
        new_chunks.insert(0, chunk(201, 10));
        let new = manifest(new_chunks);
        let p = RelPath::new("f").unwrap();
        let id = VersionId {
            author: weft_crypto::DeviceId(SecretKey::from_seed(&[1; 32]).public()),
            seq: 3,
        };
        let w = WireManifest::encode(&new, Some((&p, id, &old)));
        let WireManifest::Delta { edits, .. } = &w else {
            panic!("expected a delta")
        };
        assert!(edits.len() <= 5, "{edits:?}");
        assert!(crate::db::enc(&w).len() < 400);
        assert_eq!(w.resolve(|_, _| Ok(old.clone())).unwrap(), new);
        // A delta against the wrong base, or a forged one, does not resolve.
        let other = manifest((0..100).map(|i| chunk(i, 999)).collect());
        assert!(w.resolve(|_, _| Ok(other.clone())).is_err());
        let short = manifest((0..10).map(|i| chunk(i, 1000)).collect());
        assert!(w.resolve(|_, _| Ok(short.clone())).is_err());
    }

    #[test]
    fn a_manifest_with_an_impossible_chunk_is_refused() {
        let no_base = |_: &RelPath, _: &VersionId| -> Result<Manifest> { unreachable!() };
        let largest = crate::chunker::MAX_CHUNK as u32;
        let ok = manifest(vec![chunk(1, largest), chunk(2, 1)]);
        assert!(WireManifest::encode(&ok, None).resolve(no_base).is_ok());
        for bad in [
            manifest(vec![chunk(1, largest + 1)]),
            manifest(vec![chunk(1, 10), chunk(2, 0)]),
        ] {
            let err = WireManifest::encode(&bad, None)
                .resolve(no_base)
                .expect_err("refused");
            assert!(err.to_string().contains("larger than any chunk"), "{err}");
        }
    }

    #[test]
    fn op_vv_must_carry_the_entry_seq() {
        let (_, _, header, op) = setup();
        let id = VersionId {
            author: header.author,
            seq: 2,
        };
        assert!(op.versions(id, |_, _| unreachable!()).is_err());
    }
}
