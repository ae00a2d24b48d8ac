//! The relay's storage as its users rely on it: only certified devices of a folder's
//! owner store into it, everything is verified before it is acknowledged, a refused
//! upload changes nothing, what was acknowledged survives a restart, and quotas hold.
//!
//! Entries come from real devices (a `weft_store::Store` that scanned a folder) or are
//! signed by hand with a real device key where a test needs a particular chain.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use tempfile::TempDir;
use weft_crypto::{
    ChunkId, DeviceCertificate, DeviceId, FolderId, Hash, PersonId, SealedChunk, SecretKey,
};
use weft_relay::storage::{
    MAX_BLOB_LEN, MAX_IDS, MAX_PUT_CHUNK_BYTES, MAX_PUT_CHUNKS, PutEntries, RelayError, RelayStore,
    Stats, StorageConfig,
};
use weft_store::db::FolderRecord;
use weft_store::log::{Entry, EntryHeader, EntryKind, FORMAT, Op};
use weft_store::model::{RelPath, VersionVector};
use weft_store::scan::NoProgress;
use weft_store::store::now_ms;
use weft_store::{Home, Store};

// ---- helpers -----------------------------------------------------------------------

/// A real device with one folder holding a few files, already scanned.
struct Device {
    dir: TempDir,
    store: Store,
    folder: FolderRecord,
}

impl Device {
    fn new(name: &str) -> Device {
        let dir = TempDir::new().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("a.txt"), b"alpha").unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/b.txt"), vec![7u8; 50_000]).unwrap();
        let home = Home::new(dir.path().join("home"));
        home.init(name, now_ms()).unwrap();
        let store = Store::open(&home).unwrap();
        let folder = store.add_folder(&root, Some("f")).unwrap();
        store.scan(&folder, &NoProgress).unwrap();
        Device { dir, store, folder }
    }

    fn id(&self) -> DeviceId {
        self.store.identity().device_id()
    }

    fn person(&self) -> PersonId {
        self.store.identity().person_id()
    }

    fn cert(&self) -> Vec<u8> {
        self.store.identity().cert.to_bytes()
    }

    fn fid(&self) -> FolderId {
        self.folder.id
    }

    /// Writes a file and scans: one more entry in the device's log.
    fn edit(&self, name: &str, data: &[u8]) {
        std::fs::write(self.dir.path().join("root").join(name), data).unwrap();
        self.store.scan(&self.folder, &NoProgress).unwrap();
    }

    /// Every encoded entry of the device's folder, as it would upload them.
    fn entries(&self) -> Vec<Vec<u8>> {
        let (e, more) = self.store.entries_since(&self.fid(), &[]).unwrap();
        assert!(!more);
        e
    }

    fn tips(&self) -> Vec<(DeviceId, u64)> {
        sorted(self.store.tips(&self.fid()).unwrap())
    }

    fn seal(&self, data: &[u8]) -> SealedChunk {
        let keys = self.store.keys(&self.folder);
        SealedChunk::seal(keys.convergence_secret(), data)
    }

    /// A second device of the same person (its key and certificate), as pairing makes.
    fn sibling(&self, name: &str) -> (SecretKey, Vec<u8>) {
        let key = SecretKey::generate();
        let cert = DeviceCertificate::issue(
            &self.store.identity().person,
            DeviceId(key.public()),
            name,
            now_ms(),
        );
        (key, cert.to_bytes())
    }

    /// A signer for hand-made entries of this device in `folder`.
    fn signer(&self, folder: FolderId) -> Signer {
        Signer {
            key: self.store.identity().device.clone(),
            folder,
            keys_of: self.folder.secret.keys(&folder),
        }
    }
}

/// Signs change entries with a device key, for chains the tests choose.
struct Signer {
    key: SecretKey,
    folder: FolderId,
    keys_of: weft_crypto::FolderKeys,
}

impl Signer {
    fn author(&self) -> DeviceId {
        DeviceId(self.key.public())
    }

    /// An entry at `seq` after `prev`, creating directory `path`.
    fn entry(&self, seq: u64, prev: Hash, path: &str) -> Vec<u8> {
        let mut vv = VersionVector::new();
        vv.set(self.author(), seq);
        let header = EntryHeader {
            format: FORMAT,
            folder: self.folder,
            author: self.author(),
            seq,
            prev,
            kind: EntryKind::Change,
            epoch: self.keys_of.epoch(),
            time_ms: now_ms(),
        };
        let ops = [Op::Mkdir {
            path: RelPath::new(path).unwrap(),
            vv,
        }];
        Entry::new_change(header, &ops, &self.keys_of, &self.key).encode()
    }

    /// A correct chain of `n` entries starting at seq 1.
    fn chain(&self, n: u64) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut prev = Hash::ZERO;
        for seq in 1..=n {
            let e = self.entry(seq, prev, &format!("d{seq}"));
            prev = Hash::of(&e);
            out.push(e);
        }
        out
    }
}

fn open(dir: &Path) -> RelayStore {
    RelayStore::open(dir, StorageConfig::default()).unwrap()
}

fn open_with_quota(dir: &Path, quota: u64) -> RelayStore {
    RelayStore::open(
        dir,
        StorageConfig {
            quota_per_person: Some(quota),
        },
    )
    .unwrap()
}

fn sorted(mut v: Vec<(DeviceId, u64)>) -> Vec<(DeviceId, u64)> {
    v.sort();
    v
}

fn blob_path(relay_dir: &Path, id: &ChunkId) -> PathBuf {
    let hex = id.to_string();
    relay_dir.join("blobs").join(&hex[..2]).join(hex)
}

/// Every file under `dir`, recursively (to see that a refusal wrote nothing).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn all_entries(relay: &RelayStore, folder: &FolderId) -> Vec<Vec<u8>> {
    let (e, more) = relay.entries_since(folder, &[], usize::MAX).unwrap();
    assert!(!more);
    e
}

fn total_len(v: &[Vec<u8>]) -> u64 {
    v.iter().map(|e| e.len() as u64).sum()
}

// ---- registration ------------------------------------------------------------------

#[test]
fn register_accepts_a_valid_certificate_refuses_a_tampered_one_and_repeats_harmlessly() {
    let relay_dir = TempDir::new().unwrap();
    let relay = open(relay_dir.path());
    let a = Device::new("laptop");

    assert_eq!(relay.person_of(&a.id()).unwrap(), None);
    assert_eq!(relay.register(&a.cert()).unwrap(), a.person());
    assert_eq!(relay.person_of(&a.id()).unwrap(), Some(a.person()));
    assert_eq!(relay.device_cert(&a.id()).unwrap(), Some(a.cert()));

    // Again: same answer, nothing new.
    assert_eq!(relay.register(&a.cert()).unwrap(), a.person());
    assert_eq!(relay.stats().unwrap().persons, 1);

    // A second device of the same person: still one person.
    let (_, sib_cert) = a.sibling("phone");
    assert_eq!(relay.register(&sib_cert).unwrap(), a.person());
    assert_eq!(relay.stats().unwrap().persons, 1);

    // Tampered: every single-byte flip is refused (signature, names, keys, lengths).
    let cert = a.cert();
    for i in 0..cert.len() {
        let mut bad = cert.clone();
        bad[i] ^= 0x01;
        let e = relay.register(&bad).unwrap_err();
        assert!(
            matches!(e, RelayError::BadCertificate(_)),
            "byte {i}: {e:?}"
        );
        assert_eq!(e.reason(), "bad_certificate");
    }
    // Truncated, extended, empty, oversized.
    for bad in [
        cert[..cert.len() - 1].to_vec(),
        [cert.as_slice(), &[0]].concat(),
        Vec::new(),
        vec![0u8; 1 << 20],
    ] {
        assert!(matches!(
            relay.register(&bad),
            Err(RelayError::BadCertificate(_))
        ));
    }

    // Another person certifying a registered device's key cannot take it over.
    let b = Device::new("mallory");
    let stolen = DeviceCertificate::issue(&b.store.identity().person, a.id(), "mine", now_ms());
    assert!(matches!(
        relay.register(&stolen.to_bytes()),
        Err(RelayError::BadCertificate(_))
    ));
    assert_eq!(relay.person_of(&a.id()).unwrap(), Some(a.person()));
    assert_eq!(relay.device_cert(&a.id()).unwrap(), Some(a.cert()));
}

// ---- entries -----------------------------------------------------------------------

#[test]
fn entries_from_a_real_device_are_stored_served_byte_identical_and_survive_reopen() {
    let relay_dir = TempDir::new().unwrap();
    let a = Device::new("laptop");
    a.edit("c.txt", b"charlie");
    a.edit("d.txt", b"delta");
    let entries = a.entries();
    assert!(entries.len() >= 3, "{} entries", entries.len());
    let fid = a.fid();

    {
        let relay = open(relay_dir.path());
        relay.register(&a.cert()).unwrap();
        let put = relay.put_entries(&a.id(), &fid, &entries).unwrap();
        assert_eq!(
            put,
            PutEntries {
                stored: entries.len(),
                duplicates: 0
            }
        );
        assert_eq!(sorted(relay.tips(&fid).unwrap()), a.tips());
        assert_eq!(all_entries(&relay, &fid), entries);
        assert_eq!(relay.folders_of(&a.person()).unwrap(), vec![fid]);
        assert_eq!(relay.usage(&a.person()).unwrap(), total_len(&entries));
        assert!(relay.may_read(&a.id(), &fid).unwrap());

        // An interrupted upload is simply repeated: all duplicates, nothing changes.
        let again = relay.put_entries(&a.id(), &fid, &entries).unwrap();
        assert_eq!(
            again,
            PutEntries {
                stored: 0,
                duplicates: entries.len()
            }
        );
        assert_eq!(relay.usage(&a.person()).unwrap(), total_len(&entries));
        assert_eq!(all_entries(&relay, &fid), entries);
    }

    // After a restart everything is there, and the repeat is still recognised.
    let relay = open(relay_dir.path());
    assert_eq!(relay.person_of(&a.id()).unwrap(), Some(a.person()));
    assert_eq!(sorted(relay.tips(&fid).unwrap()), a.tips());
    assert_eq!(all_entries(&relay, &fid), entries);
    let again = relay.put_entries(&a.id(), &fid, &entries).unwrap();
    assert_eq!(again.stored, 0);
    assert_eq!(again.duplicates, entries.len());
    assert_eq!(relay.usage(&a.person()).unwrap(), total_len(&entries));

    // A later entry (the device keeps working) extends the stored chain, and a batch
    // mixing what is stored with what is new stores only the new.
    a.edit("e.txt", b"echo");
    let more = a.entries();
    assert_eq!(more.len(), entries.len() + 1);
    let put = relay.put_entries(&a.id(), &fid, &more).unwrap();
    assert_eq!(
        put,
        PutEntries {
            stored: 1,
            duplicates: entries.len()
        }
    );
    assert_eq!(all_entries(&relay, &fid), more);
    assert_eq!(sorted(relay.tips(&fid).unwrap()), a.tips());
}

#[test]
fn entries_from_an_unregistered_device_are_refused() {
    let relay_dir = TempDir::new().unwrap();
    let relay = open(relay_dir.path());
    let a = Device::new("laptop");
    let e = relay
        .put_entries(&a.id(), &a.fid(), &a.entries())
        .unwrap_err();
    assert!(matches!(e, RelayError::UnknownDevice(_)), "{e:?}");
    assert_eq!(e.reason(), "unknown_device");
    // Also when the uploader is registered but the author is not: a registered sibling
    // uploading entries of an unregistered device of the same person.
    let (sib_key, sib_cert) = a.sibling("phone");
    relay.register(&sib_cert).unwrap();
    let e = relay
        .put_entries(&DeviceId(sib_key.public()), &a.fid(), &a.entries())
        .unwrap_err();
    assert!(matches!(e, RelayError::UnknownDevice(_)), "{e:?}");
    // Nothing stored, the folder not claimed.
    assert!(relay.tips(&a.fid()).unwrap().is_empty());
    assert!(relay.folders_of(&a.person()).unwrap().is_empty());
    assert_eq!(relay.stats().unwrap().folders, 0);
}

#[test]
fn another_persons_device_cannot_write_into_a_claimed_folder() {
    let relay_dir = TempDir::new().unwrap();
    let relay = open(relay_dir.path());
    let a = Device::new("alice");
    let b = Device::new("bob");
    relay.register(&a.cert()).unwrap();
    relay.register(&b.cert()).unwrap();
    let fid = a.fid();
    let entries = a.entries();
    relay.put_entries(&a.id(), &fid, &entries).unwrap();
    let before = relay.stats().unwrap();

    // Bob's device re-uploading Alice's (valid) entries into Alice's folder.
    let e = relay.put_entries(&b.id(), &fid, &entries).unwrap_err();
    assert!(matches!(e, RelayError::NotAllowed { .. }), "{e:?}");
    assert_eq!(e.reason(), "not_allowed");

    // Bob's own signed entry claiming to belong to Alice's folder, uploaded by Bob.
    let forged = b.signer(fid).chain(1);
    let e = relay.put_entries(&b.id(), &fid, &forged).unwrap_err();
    assert!(matches!(e, RelayError::NotAllowed { .. }), "{e:?}");
    // ... and smuggled in by Alice's device: the author must have write rights too.
    let e = relay.put_entries(&a.id(), &fid, &forged).unwrap_err();
    assert!(matches!(e, RelayError::NotAllowed { .. }), "{e:?}");

    // Bob's chunks into Alice's folder.
    let c = b.seal(b"bob's data");
    let e = relay
        .put_chunks(&b.id(), &fid, &[(c.id, c.ciphertext.clone())])
        .unwrap_err();
    assert!(matches!(e, RelayError::NotAllowed { .. }), "{e:?}");

    assert!(!relay.may_read(&b.id(), &fid).unwrap());
    assert_eq!(relay.stats().unwrap(), before);
    assert_eq!(all_entries(&relay, &fid), entries);
    assert!(relay.folders_of(&b.person()).unwrap().is_empty());
    assert_eq!(relay.usage(&b.person()).unwrap(), 0);

    // A second device of Alice's may write (entries it authored, and chunks).
    let (sib_key, sib_cert) = a.sibling("phone");
    relay.register(&sib_cert).unwrap();
    let sib = Signer {
        key: sib_key.clone(),
        folder: fid,
        keys_of: a.folder.secret.keys(&fid),
    };
    let put = relay
        .put_entries(&DeviceId(sib_key.public()), &fid, &sib.chain(2))
        .unwrap();
    assert_eq!(put.stored, 2);
    let c = a.seal(b"phone data");
    assert_eq!(
        relay
            .put_chunks(&DeviceId(sib_key.public()), &fid, &[(c.id, c.ciphertext)])
            .unwrap(),
        1
    );
}

#[test]
fn entries_must_belong_to_the_folder_they_are_uploaded_to() {
    let relay_dir = TempDir::new().unwrap();
    let relay = open(relay_dir.path());
    let a = Device::new("laptop");
    relay.register(&a.cert()).unwrap();
    let other = FolderId([9; 16]);
    let e = relay
        .put_entries(&a.id(), &other, &a.entries())
        .unwrap_err();
    assert!(matches!(e, RelayError::BadEntry(_)), "{e:?}");
    assert!(relay.tips(&other).unwrap().is_empty());
    assert!(relay.tips(&a.fid()).unwrap().is_empty());
    assert_eq!(relay.stats().unwrap().folders, 0);
}

#[test]
fn a_flipped_bit_or_a_truncated_entry_is_refused() {
    let relay_dir = TempDir::new().unwrap();
    let relay = open(relay_dir.path());
    let a = Device::new("laptop");
    relay.register(&a.cert()).unwrap();
    let entries = a.entries();
    let good = &entries[0];

    // The signature is the encoding's last 64 bytes: flip one bit of it.
    let mut sig = good.clone();
    let last = sig.len() - 1;
    sig[last] ^= 0x01;
    // A bit of the sealed body.
    let mut body = good.clone();
    let mid = body.len() - 100;
    body[mid] ^= 0x80;
    // Cut short.
    let cut = good[..good.len() / 2].to_vec();
    for bad in [sig, body, cut, Vec::new()] {
        let e = relay.put_entries(&a.id(), &a.fid(), &[bad]).unwrap_err();
        assert!(matches!(e, RelayError::BadEntry(_)), "{e:?}");
        assert_eq!(e.reason(), "bad_entry");
    }
    assert!(relay.tips(&a.fid()).unwrap().is_empty());
    assert_eq!(
        relay.stats().unwrap(),
        Stats {
            persons: 1,
            ..Stats::default()
        }
    );
}

#[test]
fn a_gap_a_wrong_prev_or_a_fork_is_refused_and_changes_nothing() {
    let relay_dir = TempDir::new().unwrap();
    let relay = open(relay_dir.path());
    let a = Device::new("laptop");
    relay.register(&a.cert()).unwrap();
    let s = a.signer(a.fid());
    let fid = a.fid();
    let chain = s.chain(3);

    // Starting anywhere but seq 1 is a gap.
    let e = relay.put_entries(&a.id(), &fid, &chain[1..2]).unwrap_err();
    assert!(matches!(e, RelayError::BadEntry(_)), "{e:?}");
    // Seq 1 naming a previous entry.
    let e = relay
        .put_entries(&a.id(), &fid, &[s.entry(1, Hash([1; 32]), "x")])
        .unwrap_err();
    assert!(matches!(e, RelayError::BadEntry(_)), "{e:?}");

    relay.put_entries(&a.id(), &fid, &chain[..1]).unwrap();
    let tips = relay.tips(&fid).unwrap();

    // Skipping seq 2.
    let e = relay.put_entries(&a.id(), &fid, &chain[2..3]).unwrap_err();
    assert!(matches!(e, RelayError::BadEntry(_)), "{e:?}");
    // Seq 2 with a wrong prev.
    let wrong_prev = s.entry(2, Hash([7; 32]), "d2");
    let e = relay.put_entries(&a.id(), &fid, &[wrong_prev]).unwrap_err();
    assert!(matches!(e, RelayError::BadEntry(_)), "{e:?}");
    // A different seq 1 (a fork of a stored entry), even one that chains correctly.
    let fork1 = s.entry(1, Hash::ZERO, "other");
    let e = relay.put_entries(&a.id(), &fid, &[fork1]).unwrap_err();
    assert!(matches!(e, RelayError::BadEntry(_)), "{e:?}");
    assert_eq!(relay.tips(&fid).unwrap(), tips);
    assert_eq!(all_entries(&relay, &fid), chain[..1].to_vec());

    // A fork inside one batch: two different entries at seq 2.
    let fork2 = s.entry(2, Hash::of(&chain[0]), "other");
    let e = relay
        .put_entries(&a.id(), &fid, &[chain[1].clone(), fork2.clone()])
        .unwrap_err();
    assert!(matches!(e, RelayError::BadEntry(_)), "{e:?}");
    assert_eq!(relay.tips(&fid).unwrap(), tips);

    // The rest of the honest chain goes in; the fork of a stored seq 2 is then refused.
    let put = relay.put_entries(&a.id(), &fid, &chain).unwrap();
    assert_eq!(
        put,
        PutEntries {
            stored: 2,
            duplicates: 1
        }
    );
    let usage = relay.usage(&a.person()).unwrap();
    let e = relay.put_entries(&a.id(), &fid, &[fork2]).unwrap_err();
    assert!(matches!(e, RelayError::BadEntry(_)), "{e:?}");
    assert_eq!(all_entries(&relay, &fid), chain);
    assert_eq!(relay.usage(&a.person()).unwrap(), usage);
}

#[test]
fn a_batch_with_one_bad_entry_stores_none_of_it() {
    let relay_dir = TempDir::new().unwrap();
    let relay = open(relay_dir.path());
    let a = Device::new("laptop");
    relay.register(&a.cert()).unwrap();
    let fid = a.fid();
    let s = a.signer(fid);
    let mut batch = s.chain(4);
    // The last one is signed by a key that is not its author's.
    let mut forged = Entry::decode(&batch[3]).unwrap();
    forged.signature = SecretKey::generate().sign("log-entry", b"whatever");
    batch[3] = forged.encode();

    let e = relay.put_entries(&a.id(), &fid, &batch).unwrap_err();
    assert!(matches!(e, RelayError::BadEntry(_)), "{e:?}");
    assert!(relay.tips(&fid).unwrap().is_empty());
    assert!(all_entries(&relay, &fid).is_empty());
    assert_eq!(relay.usage(&a.person()).unwrap(), 0);
    // Not even the claim of the folder stays.
    assert!(relay.folders_of(&a.person()).unwrap().is_empty());
    assert_eq!(relay.stats().unwrap().folders, 0);

    // The same with a chain error in the middle (checked inside the transaction).
    let mut batch = s.chain(4);
    batch[2] = s.entry(3, Hash([3; 32]), "d3");
    let e = relay.put_entries(&a.id(), &fid, &batch).unwrap_err();
    assert!(matches!(e, RelayError::BadEntry(_)), "{e:?}");
    assert!(relay.tips(&fid).unwrap().is_empty());
    assert_eq!(relay.stats().unwrap().folders, 0);
}

#[test]
fn entries_since_pages_by_max_bytes_and_returns_everything() {
    let relay_dir = TempDir::new().unwrap();
    let relay = open(relay_dir.path());
    let a = Device::new("laptop");
    relay.register(&a.cert()).unwrap();
    let fid = a.fid();
    let (sib_key, sib_cert) = a.sibling("phone");
    relay.register(&sib_cert).unwrap();
    let sib = Signer {
        key: sib_key,
        folder: fid,
        keys_of: a.folder.secret.keys(&fid),
    };
    let mine = a.signer(fid).chain(7);
    let theirs = sib.chain(5);
    relay.put_entries(&a.id(), &fid, &mine).unwrap();
    relay.put_entries(&a.id(), &fid, &theirs).unwrap();
    let mut everything: Vec<Vec<u8>> = [mine.clone(), theirs.clone()].concat();
    everything.sort();

    for max_bytes in [0usize, 1, mine[0].len() * 2 + 1, mine[0].len() * 5, 1 << 30] {
        let mut have: Vec<(DeviceId, u64)> = Vec::new();
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut pages = 0;
        loop {
            let (page, more) = relay.entries_since(&fid, &have, max_bytes).unwrap();
            pages += 1;
            assert!(!page.is_empty(), "a page with nothing while more remained");
            let bytes: usize = page.iter().map(Vec::len).sum();
            assert!(page.len() == 1 || bytes <= max_bytes, "page over max_bytes");
            for raw in &page {
                let e = Entry::decode(raw).unwrap();
                let h = &e.header;
                match have.iter_mut().find(|(d, _)| *d == h.author) {
                    Some((_, seq)) => {
                        assert_eq!(h.seq, *seq + 1, "oldest first per author");
                        *seq = h.seq;
                    }
                    None => {
                        assert_eq!(h.seq, 1);
                        have.push((h.author, 1));
                    }
                }
            }
            got.extend(page);
            if !more {
                break;
            }
            assert!(pages < 100);
        }
        got.sort();
        assert_eq!(got, everything, "max_bytes {max_bytes}");
        if max_bytes <= 1 {
            assert_eq!(pages, 12, "one entry per page");
        }
        if max_bytes == 1 << 30 {
            assert_eq!(pages, 1);
        }
        // Up to date: nothing, nothing more.
        assert_eq!(
            relay.entries_since(&fid, &have, max_bytes).unwrap(),
            (Vec::new(), false)
        );
    }

    // A reader with part of one chain gets the rest of it and all of the other.
    let (got, more) = relay
        .entries_since(&fid, &[(a.id(), 4)], usize::MAX)
        .unwrap();
    assert!(!more);
    let mut want = [mine[4..].to_vec(), theirs.clone()].concat();
    want.sort();
    let mut got = got;
    got.sort();
    assert_eq!(got, want);

    // A reader claiming more than is stored gets nothing of that author.
    let (got, _) = relay
        .entries_since(&fid, &[(a.id(), 100), (sib.author(), 100)], usize::MAX)
        .unwrap();
    assert!(got.is_empty());

    // Too many tips.
    let many: Vec<(DeviceId, u64)> = (0..=MAX_IDS)
        .map(|i| {
            (
                DeviceId(SecretKey::from_seed(&[(i % 251) as u8; 32]).public()),
                1,
            )
        })
        .collect();
    assert!(matches!(
        relay.entries_since(&fid, &many, 1000),
        Err(RelayError::TooLarge(_))
    ));
}

// ---- chunks ------------------------------------------------------------------------

/// Blobs staged by a relay killed mid-upload are gone when it opens its storage again;
/// stored blobs stay.
#[test]
fn blobs_staged_before_a_crash_are_removed_on_open() {
    let relay_dir = TempDir::new().unwrap();
    let a = Device::new("laptop");
    let c = a.seal(b"kept");
    {
        let relay = open(relay_dir.path());
        relay.register(&a.cert()).unwrap();
        relay
            .put_chunks(&a.id(), &a.fid(), &[(c.id, c.ciphertext.clone())])
            .unwrap();
    }
    let blobs = relay_dir.path().join("blobs");
    let stale = blobs.join("tmp-999999-7");
    std::fs::write(&stale, b"half an upload").unwrap();
    let relay = open(relay_dir.path());
    assert!(!stale.exists(), "a staged blob survived the reopen");
    assert_eq!(relay.chunk(&a.id(), &c.id).unwrap(), Some(c.ciphertext));
}

#[test]
fn a_chunk_that_does_not_match_its_id_is_refused_and_nothing_is_stored() {
    let relay_dir = TempDir::new().unwrap();
    let relay = open(relay_dir.path());
    let a = Device::new("laptop");
    relay.register(&a.cert()).unwrap();
    let fid = a.fid();
    let good = a.seal(b"good");
    let other = a.seal(b"other");
    let mut flipped = good.ciphertext.clone();
    flipped[0] ^= 1;

    for batch in [
        vec![
            (good.id, good.ciphertext.clone()),
            (other.id, good.ciphertext.clone()),
        ],
        vec![(good.id, flipped)],
        vec![(
            good.id,
            good.ciphertext[..good.ciphertext.len() - 1].to_vec(),
        )],
    ] {
        let e = relay.put_chunks(&a.id(), &fid, &batch).unwrap_err();
        assert!(matches!(e, RelayError::ChunkMismatch(_)), "{e:?}");
        assert_eq!(e.reason(), "chunk_mismatch");
    }
    assert_eq!(
        relay.missing_chunks(&fid, &[good.id, other.id]).unwrap(),
        vec![good.id, other.id]
    );
    assert_eq!(relay.chunk(&a.id(), &good.id).unwrap(), None);
    assert!(files_under(&relay_dir.path().join("blobs")).is_empty());
    assert_eq!(relay.usage(&a.person()).unwrap(), 0);
    assert_eq!(relay.stats().unwrap().folders, 0);
}

#[test]
fn a_stored_chunk_is_served_to_the_owners_devices_only() {
    let relay_dir = TempDir::new().unwrap();
    let relay = open(relay_dir.path());
    let a = Device::new("alice");
    let b = Device::new("bob");
    relay.register(&a.cert()).unwrap();
    relay.register(&b.cert()).unwrap();
    let fid = a.fid();
    let c1 = a.seal(b"one");
    let c2 = a.seal(&[5u8; 100_000]);
    let c3 = a.seal(b"three");

    // What is missing before and after.
    assert_eq!(
        relay.missing_chunks(&fid, &[c1.id, c2.id, c3.id]).unwrap(),
        vec![c1.id, c2.id, c3.id]
    );
    let n = relay
        .put_chunks(
            &a.id(),
            &fid,
            &[
                (c1.id, c1.ciphertext.clone()),
                (c2.id, c2.ciphertext.clone()),
            ],
        )
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(
        relay
            .missing_chunks(&fid, &[c1.id, c3.id, c2.id, c3.id])
            .unwrap(),
        vec![c3.id]
    );
    assert_eq!(relay.folders_of(&a.person()).unwrap(), vec![fid]);

    // The owner's device reads them, byte-identical; so does a second device of hers.
    assert_eq!(
        relay.chunk(&a.id(), &c1.id).unwrap(),
        Some(c1.ciphertext.clone())
    );
    assert_eq!(
        relay.chunk(&a.id(), &c2.id).unwrap(),
        Some(c2.ciphertext.clone())
    );
    let (sib_key, sib_cert) = a.sibling("phone");
    relay.register(&sib_cert).unwrap();
    let sib = DeviceId(sib_key.public());
    assert_eq!(
        relay.chunk(&sib, &c2.id).unwrap(),
        Some(c2.ciphertext.clone())
    );
    assert!(relay.may_read(&sib, &fid).unwrap());

    // Another person's registered device, an unregistered device: as if absent.
    assert_eq!(relay.chunk(&b.id(), &c1.id).unwrap(), None);
    let stranger = DeviceId(SecretKey::generate().public());
    assert_eq!(relay.chunk(&stranger, &c1.id).unwrap(), None);
    assert!(!relay.may_read(&stranger, &fid).unwrap());
    // Not stored at all.
    assert_eq!(relay.chunk(&a.id(), &c3.id).unwrap(), None);

    // Uploading again costs nothing; a batch mixing old and new stores the new.
    let usage = relay.usage(&a.person()).unwrap();
    assert_eq!(usage, (c1.ciphertext.len() + c2.ciphertext.len()) as u64);
    assert_eq!(
        relay
            .put_chunks(&a.id(), &fid, &[(c1.id, c1.ciphertext.clone())])
            .unwrap(),
        0
    );
    assert_eq!(relay.usage(&a.person()).unwrap(), usage);
    assert_eq!(
        relay
            .put_chunks(
                &a.id(),
                &fid,
                &[
                    (c1.id, c1.ciphertext.clone()),
                    (c3.id, c3.ciphertext.clone()),
                    (c3.id, c3.ciphertext.clone())
                ]
            )
            .unwrap(),
        1
    );
    assert_eq!(
        relay.usage(&a.person()).unwrap(),
        usage + c3.ciphertext.len() as u64
    );

    // After a restart, still there.
    drop(relay);
    let relay = open(relay_dir.path());
    assert_eq!(relay.chunk(&a.id(), &c2.id).unwrap(), Some(c2.ciphertext));
    assert!(
        relay
            .missing_chunks(&fid, &[c1.id, c2.id, c3.id])
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_blob_damaged_on_disk_reads_as_absent_and_a_reupload_repairs_it() {
    let relay_dir = TempDir::new().unwrap();
    let relay = open(relay_dir.path());
    let a = Device::new("laptop");
    relay.register(&a.cert()).unwrap();
    let fid = a.fid();
    let c = a.seal(&[1u8; 70_000]);
    let d = a.seal(b"short");
    relay
        .put_chunks(
            &a.id(),
            &fid,
            &[(c.id, c.ciphertext.clone()), (d.id, d.ciphertext.clone())],
        )
        .unwrap();

    // A flipped bit, same length.
    let path = blob_path(relay_dir.path(), &c.id);
    let mut bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes, c.ciphertext);
    bytes[1234] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(relay.chunk(&a.id(), &c.id).unwrap(), None);
    // Truncated; grown; gone.
    let dpath = blob_path(relay_dir.path(), &d.id);
    std::fs::write(&dpath, &d.ciphertext[..3]).unwrap();
    assert_eq!(relay.chunk(&a.id(), &d.id).unwrap(), None);
    std::fs::write(&dpath, [d.ciphertext.as_slice(), b"more"].concat()).unwrap();
    assert_eq!(relay.chunk(&a.id(), &d.id).unwrap(), None);
    std::fs::remove_file(&dpath).unwrap();
    assert_eq!(relay.chunk(&a.id(), &d.id).unwrap(), None);

    // Uploading the chunks again (free: the folder already stores them) rewrites the
    // blobs whose file is not what was recorded.
    let usage = relay.usage(&a.person()).unwrap();
    assert_eq!(
        relay
            .put_chunks(&a.id(), &fid, &[(d.id, d.ciphertext.clone())])
            .unwrap(),
        0
    );
    assert_eq!(relay.chunk(&a.id(), &d.id).unwrap(), Some(d.ciphertext));
    assert_eq!(
        relay
            .put_chunks(&a.id(), &fid, &[(c.id, c.ciphertext.clone())])
            .unwrap(),
        0
    );
    assert_eq!(relay.chunk(&a.id(), &c.id).unwrap(), Some(c.ciphertext));
    assert_eq!(relay.usage(&a.person()).unwrap(), usage);
}

#[test]
fn limits_are_refused_before_any_work() {
    let relay_dir = TempDir::new().unwrap();
    let relay = open(relay_dir.path());
    let a = Device::new("laptop");
    relay.register(&a.cert()).unwrap();
    let fid = a.fid();

    let ids: Vec<ChunkId> = (0..=MAX_IDS)
        .map(|i| ChunkId(Hash::of(&i.to_le_bytes())))
        .collect();
    let e = relay.missing_chunks(&fid, &ids).unwrap_err();
    assert!(matches!(e, RelayError::TooLarge(_)), "{e:?}");
    assert_eq!(e.reason(), "too_large");
    assert_eq!(
        relay.missing_chunks(&fid, &ids[..MAX_IDS]).unwrap().len(),
        MAX_IDS
    );

    let many: Vec<(ChunkId, Vec<u8>)> = (0..=MAX_PUT_CHUNKS)
        .map(|i| {
            let c = a.seal(&i.to_le_bytes());
            (c.id, c.ciphertext)
        })
        .collect();
    assert!(matches!(
        relay.put_chunks(&a.id(), &fid, &many),
        Err(RelayError::TooLarge(_))
    ));
    let big = vec![0u8; MAX_BLOB_LEN + 1];
    assert!(matches!(
        relay.put_chunks(&a.id(), &fid, &[(ChunkId::of(&big), big.clone())]),
        Err(RelayError::TooLarge(_))
    ));
    // Chunks of the largest size, within the count, are over the per-call byte limit.
    let fat: Vec<(ChunkId, Vec<u8>)> = (0..MAX_PUT_CHUNK_BYTES / MAX_BLOB_LEN + 1)
        .map(|i| {
            let b = vec![i as u8; MAX_BLOB_LEN];
            (ChunkId::of(&b), b)
        })
        .collect();
    assert!(matches!(
        relay.put_chunks(&a.id(), &fid, &fat),
        Err(RelayError::TooLarge(_))
    ));
    // An oversized entry.
    let huge = vec![0u8; weft_store::log::MAX_ENTRY_LEN + 1];
    assert!(matches!(
        relay.put_entries(&a.id(), &fid, &[huge]),
        Err(RelayError::TooLarge(_))
    ));
    assert_eq!(relay.stats().unwrap().folders, 0);
    assert!(files_under(&relay_dir.path().join("blobs")).is_empty());
}

// ---- quota -------------------------------------------------------------------------

#[test]
fn an_upload_over_quota_is_refused_whole_and_changes_nothing() {
    let relay_dir = TempDir::new().unwrap();
    let a = Device::new("laptop");
    let entries = a.entries();
    let fid = a.fid();
    let c1 = a.seal(&[1u8; 20_000]);
    let c2 = a.seal(&[2u8; 20_000]);
    let c3 = a.seal(&[3u8; 20_000]);
    let elen = total_len(&entries);
    let clen = c1.ciphertext.len() as u64;
    // Room for the entries, one chunk and a bit.
    let quota = elen + clen + clen / 2;
    let relay = open_with_quota(relay_dir.path(), quota);
    relay.register(&a.cert()).unwrap();

    relay.put_entries(&a.id(), &fid, &entries).unwrap();
    assert_eq!(
        relay
            .put_chunks(&a.id(), &fid, &[(c1.id, c1.ciphertext.clone())])
            .unwrap(),
        1
    );
    let used = elen + clen;
    assert_eq!(relay.usage(&a.person()).unwrap(), used);
    let stats = relay.stats().unwrap();
    let blobs = files_under(&relay_dir.path().join("blobs"));

    // Two more chunks (one already stored, free) would go over: refused whole.
    let e = relay
        .put_chunks(
            &a.id(),
            &fid,
            &[
                (c1.id, c1.ciphertext.clone()),
                (c2.id, c2.ciphertext.clone()),
                (c3.id, c3.ciphertext.clone()),
            ],
        )
        .unwrap_err();
    match e {
        RelayError::OverQuota {
            used: u,
            quota: q,
            need,
        } => {
            assert_eq!((u, q, need), (used, quota, 2 * clen));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(relay.usage(&a.person()).unwrap(), used);
    assert_eq!(relay.stats().unwrap(), stats);
    assert_eq!(
        relay.missing_chunks(&fid, &[c1.id, c2.id, c3.id]).unwrap(),
        vec![c2.id, c3.id]
    );
    // Refused before any blob was written.
    assert_eq!(files_under(&relay_dir.path().join("blobs")), blobs);
    // Earlier data intact.
    assert_eq!(
        relay.chunk(&a.id(), &c1.id).unwrap(),
        Some(c1.ciphertext.clone())
    );
    assert_eq!(all_entries(&relay, &fid), entries);

    // Entries over quota too (a second device's chain, larger than what is left).
    let (sib_key, sib_cert) = a.sibling("phone");
    relay.register(&sib_cert).unwrap();
    let sib = Signer {
        key: sib_key.clone(),
        folder: fid,
        keys_of: a.folder.secret.keys(&fid),
    };
    let more = sib.chain(200);
    assert!(total_len(&more) > quota - used);
    let e = relay
        .put_entries(&DeviceId(sib_key.public()), &fid, &more)
        .unwrap_err();
    assert!(matches!(e, RelayError::OverQuota { .. }), "{e:?}");
    assert_eq!(e.reason(), "over_quota");
    assert_eq!(all_entries(&relay, &fid), entries);
    assert_eq!(relay.usage(&a.person()).unwrap(), used);

    // Re-sending what is stored costs nothing, so it is accepted even when full.
    assert_eq!(
        relay
            .put_entries(&a.id(), &fid, &entries)
            .unwrap()
            .duplicates,
        entries.len()
    );
    assert_eq!(
        relay
            .put_chunks(&a.id(), &fid, &[(c1.id, c1.ciphertext.clone())])
            .unwrap(),
        0
    );

    // Exactly up to the quota is allowed.
    let left = quota - used;
    let exact = (0..)
        .map(|n: u32| a.seal(&vec![4u8; n as usize]))
        .find(|c| c.ciphertext.len() as u64 == left)
        .unwrap();
    assert_eq!(
        relay
            .put_chunks(&a.id(), &fid, &[(exact.id, exact.ciphertext)])
            .unwrap(),
        1
    );
    assert_eq!(relay.usage(&a.person()).unwrap(), quota);
}

// ---- gc ----------------------------------------------------------------------------

#[test]
fn gc_removes_orphan_blobs_and_temporary_files_and_keeps_recorded_blobs() {
    let relay_dir = TempDir::new().unwrap();
    let relay = open(relay_dir.path());
    let a = Device::new("laptop");
    relay.register(&a.cert()).unwrap();
    let fid = a.fid();
    let kept = a.seal(b"kept");
    relay
        .put_chunks(&a.id(), &fid, &[(kept.id, kept.ciphertext.clone())])
        .unwrap();

    // A crash after the rename, before the commit: a blob no record names.
    let orphan = a.seal(b"orphan");
    let opath = blob_path(relay_dir.path(), &orphan.id);
    std::fs::create_dir_all(opath.parent().unwrap()).unwrap();
    std::fs::write(&opath, &orphan.ciphertext).unwrap();
    // A crash before the rename: a temporary file.
    let tmp = relay_dir.path().join("blobs").join("tmp-999-7");
    std::fs::write(&tmp, b"partial").unwrap();
    // Something that is not ours is left alone.
    let foreign = relay_dir.path().join("blobs").join("README");
    std::fs::write(&foreign, b"operator notes").unwrap();

    // The orphan is not served, and not counted as stored.
    assert_eq!(relay.chunk(&a.id(), &orphan.id).unwrap(), None);
    assert_eq!(
        relay.missing_chunks(&fid, &[orphan.id]).unwrap(),
        vec![orphan.id]
    );

    let (files, bytes) = relay.gc().unwrap();
    assert_eq!(files, 2);
    assert_eq!(bytes, (orphan.ciphertext.len() + b"partial".len()) as u64);
    assert!(!opath.exists());
    assert!(!tmp.exists());
    assert!(foreign.exists());
    assert_eq!(
        relay.chunk(&a.id(), &kept.id).unwrap(),
        Some(kept.ciphertext)
    );
    // Nothing left to do.
    assert_eq!(relay.gc().unwrap(), (0, 0));

    // The orphan can still be uploaded properly afterwards.
    assert_eq!(
        relay
            .put_chunks(&a.id(), &fid, &[(orphan.id, orphan.ciphertext.clone())])
            .unwrap(),
        1
    );
    assert_eq!(relay.gc().unwrap(), (0, 0));
    assert_eq!(
        relay.chunk(&a.id(), &orphan.id).unwrap(),
        Some(orphan.ciphertext)
    );
}

// ---- stats and concurrency ---------------------------------------------------------

#[test]
fn stats_count_persons_folders_entries_chunks_and_bytes() {
    let relay_dir = TempDir::new().unwrap();
    let relay = open(relay_dir.path());
    assert_eq!(relay.stats().unwrap(), Stats::default());
    let a = Device::new("alice");
    let b = Device::new("bob");
    relay.register(&a.cert()).unwrap();
    relay.register(&b.cert()).unwrap();
    relay.register(&a.sibling("phone").1).unwrap();
    assert_eq!(
        relay.stats().unwrap(),
        Stats {
            persons: 2,
            ..Stats::default()
        }
    );

    let ae = a.entries();
    let be = b.entries();
    relay.put_entries(&a.id(), &a.fid(), &ae).unwrap();
    relay.put_entries(&b.id(), &b.fid(), &be).unwrap();
    let c = a.seal(b"chunk");
    let d = b.seal(b"chunk");
    relay
        .put_chunks(&a.id(), &a.fid(), &[(c.id, c.ciphertext.clone())])
        .unwrap();
    relay
        .put_chunks(&b.id(), &b.fid(), &[(d.id, d.ciphertext.clone())])
        .unwrap();
    let bytes = total_len(&ae) + total_len(&be) + (c.ciphertext.len() + d.ciphertext.len()) as u64;
    assert_eq!(
        relay.stats().unwrap(),
        Stats {
            persons: 2,
            folders: 2,
            stored_bytes: bytes,
            chunks: 2,
            entries: (ae.len() + be.len()) as u64,
        }
    );
    assert_eq!(
        relay.usage(&a.person()).unwrap() + relay.usage(&b.person()).unwrap(),
        bytes
    );
    // The same after a restart.
    drop(relay);
    let relay = open(relay_dir.path());
    assert_eq!(relay.stats().unwrap().stored_bytes, bytes);
}

#[test]
fn concurrent_uploads_and_gc_keep_every_acknowledged_chunk() {
    let relay_dir = TempDir::new().unwrap();
    let relay = std::sync::Arc::new(open(relay_dir.path()));
    let a = Device::new("laptop");
    relay.register(&a.cert()).unwrap();
    let fid = a.fid();
    let chunks: Vec<SealedChunk> = (0..64u32).map(|i| a.seal(&i.to_le_bytes())).collect();
    std::thread::scope(|s| {
        for t in 0..4 {
            let relay = relay.clone();
            let chunks = &chunks;
            let me = a.id();
            s.spawn(move || {
                for c in chunks.iter().skip(t).step_by(2) {
                    relay
                        .put_chunks(&me, &fid, &[(c.id, c.ciphertext.clone())])
                        .unwrap();
                }
            });
        }
        let relay = relay.clone();
        s.spawn(move || {
            for _ in 0..20 {
                relay.gc().unwrap();
            }
        });
    });
    for c in &chunks {
        assert_eq!(
            relay.chunk(&a.id(), &c.id).unwrap().as_ref(),
            Some(&c.ciphertext)
        );
    }
    assert_eq!(relay.stats().unwrap().chunks, 64);
    assert_eq!(
        relay.usage(&a.person()).unwrap(),
        chunks
            .iter()
            .map(|c| c.ciphertext.len() as u64)
            .sum::<u64>()
    );
}

#[test]
fn retention_forgets_only_chunks_no_report_needs_after_the_retention_period() {
    const DAY: u64 = 86_400_000;
    let relay_dir = TempDir::new().unwrap();
    let relay = open(relay_dir.path());
    let a = Device::new("laptop");
    relay.register(&a.cert()).unwrap();
    let fid = a.fid();
    let current = a.seal(b"the current version");
    let old = a.seal(b"an old version");
    relay
        .put_chunks(
            &a.id(),
            &fid,
            &[
                (current.id, current.ciphertext.clone()),
                (old.id, old.ciphertext.clone()),
            ],
        )
        .unwrap();
    let person = relay.person_of(&a.id()).unwrap().unwrap();
    let used = relay.usage(&person).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;

    // No report yet: nothing is forgotten, however late.
    assert_eq!(relay.expire(now + 400 * DAY, 30).unwrap(), (0, 0));

    // A report that needs only the current version: the old one is forgotten once
    // 30 days have passed since it was last needed (its upload), not before.
    assert_eq!(
        relay
            .report_live(&a.id(), &fid, &[current.id], now + DAY)
            .unwrap(),
        1
    );
    assert_eq!(relay.expire(now + 10 * DAY, 30).unwrap(), (0, 0));
    assert_eq!(
        relay.chunk(&a.id(), &old.id).unwrap(),
        Some(old.ciphertext.clone())
    );
    let (n, bytes) = relay.expire(now + 31 * DAY, 30).unwrap();
    assert_eq!((n, bytes), (1, old.ciphertext.len() as u64));
    assert_eq!(relay.chunk(&a.id(), &old.id).unwrap(), None);
    assert_eq!(relay.missing_chunks(&fid, &[old.id]).unwrap(), vec![old.id]);
    assert_eq!(
        relay.usage(&person).unwrap(),
        used - old.ciphertext.len() as u64
    );
    // Its blob is now garbage; the current one stays.
    let (files, _) = relay.gc().unwrap();
    assert_eq!(files, 1);
    assert!(!blob_path(relay_dir.path(), &old.id).exists());
    assert_eq!(
        relay.chunk(&a.id(), &current.id).unwrap(),
        Some(current.ciphertext.clone())
    );
    // The current version, needed in every report, is never forgotten.
    relay
        .report_live(&a.id(), &fid, &[current.id], now + 400 * DAY)
        .unwrap();
    assert_eq!(relay.expire(now + 800 * DAY, 30).unwrap(), (0, 0));

    // Only a member with write rights may report.
    let stranger = Device::new("stranger");
    relay.register(&stranger.cert()).unwrap();
    assert!(matches!(
        relay.report_live(&stranger.id(), &fid, &[], now),
        Err(RelayError::NotAllowed { .. })
    ));
}

#[test]
fn membership_decides_who_writes_and_only_the_owner_changes_it() {
    use weft_store::members::Role;
    let relay_dir = TempDir::new().unwrap();
    let relay = open(relay_dir.path());
    let a = Device::new("alice");
    let b = Device::new("bob");
    relay.register(&a.cert()).unwrap();
    relay.register(&b.cert()).unwrap();
    let fid = a.fid();
    relay.put_entries(&a.id(), &fid, &a.entries()).unwrap();

    // Alice shares with Bob as editor: Bob reads, and his entries are stored.
    let m1 = a.store.share(&a.folder, b.person(), Role::Editor).unwrap();
    // Bob cannot upload Alice's membership entries (only the owner changes them).
    let e = relay
        .put_membership(&b.id(), &fid, std::slice::from_ref(&m1))
        .unwrap_err();
    assert!(matches!(e, RelayError::NotAllowed { .. }), "{e:?}");
    assert_eq!(
        relay
            .put_membership(&a.id(), &fid, std::slice::from_ref(&m1))
            .unwrap(),
        1
    );
    assert_eq!(
        relay
            .put_membership(&a.id(), &fid, std::slice::from_ref(&m1))
            .unwrap(),
        0
    );
    assert!(relay.may_read(&b.id(), &fid).unwrap());
    assert_eq!(relay.shared_with(&b.person()).unwrap(), vec![(fid, 1)]);
    let keys = a.folder.secret.keys(&fid);
    let bob_writer = Signer {
        key: b.store.identity().device.clone(),
        folder: fid,
        keys_of: keys.clone(),
    };
    let bob_entries = bob_writer.chain(3);
    relay.put_entries(&b.id(), &fid, &bob_entries[..2]).unwrap();

    // Downgraded to viewer: what Bob's device wrote before stays, the rest is refused.
    let m2 = a.store.share(&a.folder, b.person(), Role::Viewer).unwrap();
    // A tampered membership entry (a flipped bit) is refused and changes nothing.
    let mut bad = m2.clone();
    let n = bad.len();
    bad[n - 5] ^= 1;
    assert!(relay.put_membership(&a.id(), &fid, &[bad]).is_err());
    assert_eq!(relay.membership_chain(&fid).unwrap(), vec![m1.clone()]);
    relay.put_membership(&a.id(), &fid, &[m2]).unwrap();
    let e = relay
        .put_entries(&b.id(), &fid, &bob_entries[2..])
        .unwrap_err();
    assert!(matches!(e, RelayError::NotAllowed { .. }), "{e:?}");
    assert!(relay.may_read(&b.id(), &fid).unwrap());

    // A link Bob makes to a chunk of the folder while he is a member works ...
    let chunk = a.seal(b"a shared file");
    relay
        .put_chunks(&a.id(), &fid, &[(chunk.id, chunk.ciphertext.clone())])
        .unwrap();
    let secrets = weft_crypto::link::LinkSecrets::derive(
        &weft_crypto::link::LinkKey::generate(),
        &weft_crypto::link::LinkToken([0; 16]),
        None,
    )
    .unwrap();
    let token = weft_crypto::link::LinkToken::generate().0;
    relay
        .create_link(
            &b.id(),
            weft_relay::links::NewLink {
                token,
                folder: fid,
                record: vec![1],
                chunks: vec![chunk.id],
                access_hash: secrets.access_hash(),
                expires_ms: None,
                max_downloads: None,
            },
        )
        .unwrap();
    assert!(relay.link_status(&token).is_ok());
    assert_eq!(
        relay
            .link_chunk(&token, Some(&secrets.access), &chunk.id)
            .unwrap(),
        chunk.ciphertext
    );

    // Removed: Bob neither reads nor is told of the folder any more.
    let m3 = a.store.unshare(&a.folder, b.person()).unwrap();
    relay.put_membership(&a.id(), &fid, &[m3]).unwrap();
    assert!(!relay.may_read(&b.id(), &fid).unwrap());
    // ... and his links stop working, as if revoked.
    use weft_relay::links::LinkError;
    assert!(matches!(relay.link_status(&token), Err(LinkError::Revoked)));
    assert!(matches!(
        relay.link_record(&token, Some(&secrets.access)),
        Err(LinkError::Revoked)
    ));
    assert!(matches!(
        relay.link_chunk(&token, Some(&secrets.access), &chunk.id),
        Err(LinkError::Revoked)
    ));
    assert!(relay.shared_with(&b.person()).unwrap().is_empty());
    // ... but may read the chain, to learn that they were removed.
    assert_eq!(relay.membership_since(&b.id(), &fid, 0).unwrap().len(), 3);
    // A person never listed may not.
    let c = Device::new("carol");
    relay.register(&c.cert()).unwrap();
    assert!(relay.membership_since(&c.id(), &fid, 0).is_err());

    // Once Bob reaches his link limit (links into his own folder), the orphaned link
    // makes room, and it stays revoked when he is made a member again.
    use weft_relay::links::MAX_LINKS_PER_PERSON;
    let own = b.seal(b"bob's own file");
    relay
        .put_chunks(&b.id(), &b.fid(), &[(own.id, own.ciphertext.clone())])
        .unwrap();
    let own_link = || weft_relay::links::NewLink {
        token: weft_crypto::link::LinkToken::generate().0,
        folder: b.fid(),
        record: vec![2],
        chunks: vec![own.id],
        access_hash: secrets.access_hash(),
        expires_ms: None,
        max_downloads: None,
    };
    for _ in 1..MAX_LINKS_PER_PERSON {
        relay.create_link(&b.id(), own_link()).unwrap();
    }
    relay.create_link(&b.id(), own_link()).unwrap();
    assert!(matches!(
        relay.create_link(&b.id(), own_link()),
        Err(RelayError::TooLarge(_))
    ));
    let m4 = a.store.share(&a.folder, b.person(), Role::Editor).unwrap();
    relay.put_membership(&a.id(), &fid, &[m4]).unwrap();
    assert!(relay.may_read(&b.id(), &fid).unwrap());
    assert!(matches!(relay.link_status(&token), Err(LinkError::Revoked)));
    assert!(matches!(
        relay.link_record(&token, Some(&secrets.access)),
        Err(LinkError::Revoked)
    ));
}
