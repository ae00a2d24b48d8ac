//! Round trips: everything sealed, signed, wrapped or printed comes back unchanged.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use std::str::FromStr;
use weft_crypto::wrap::{WrappedKey, unwrap, wrap};
use weft_crypto::{
    ChunkId, ChunkKey, DeviceCertificate, DeviceId, FolderId, FolderSecret, Hash, PersonId,
    SealedChunk, SecretKey, Signature,
};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn sign_verify(seed in any::<[u8; 32]>(), context in "[a-z0-9-]{0,24}", msg in proptest::collection::vec(any::<u8>(), 0..256)) {
        let sk = SecretKey::from_seed(&seed);
        let sig = sk.sign(&context, &msg);
        prop_assert!(sk.public().verify(&context, &msg, &sig).is_ok());
        // Deterministic.
        prop_assert_eq!(sk.sign(&context, &msg), sig);
        // A key rebuilt from its seed signs the same.
        let again = SecretKey::from_seed(&sk.to_seed());
        prop_assert_eq!(again.public(), sk.public());
        prop_assert_eq!(again.sign(&context, &msg), sig);
        prop_assert_eq!(sk.clone().public(), sk.public());
    }

    #[test]
    fn certificate_issue_verify_encode_decode(
        person_seed in any::<[u8; 32]>(),
        device_seed in any::<[u8; 32]>(),
        name in "\\PC{0,40}",
        now_ms in any::<u64>(),
    ) {
        let person = SecretKey::from_seed(&person_seed);
        let device = DeviceId(SecretKey::from_seed(&device_seed).public());
        let cert = DeviceCertificate::issue(&person, device, &name, now_ms);
        prop_assert_eq!(cert.body.version, 1);
        prop_assert_eq!(cert.body.person, PersonId(person.public()));
        prop_assert_eq!(cert.body.device, device);
        prop_assert_eq!(&cert.body.name, &name);
        prop_assert_eq!(cert.body.issued_at_ms, now_ms);
        prop_assert!(cert.verify(None).is_ok());
        prop_assert!(cert.verify(Some(&PersonId(person.public()))).is_ok());
        let bytes = cert.to_bytes();
        let back = DeviceCertificate::from_bytes(&bytes).unwrap();
        prop_assert_eq!(&back, &cert);
        prop_assert_eq!(back.to_bytes(), bytes);
    }

    #[test]
    fn metadata_seal_open(
        secret in any::<[u8; 32]>(),
        epoch in any::<u32>(),
        folder in any::<[u8; 16]>(),
        aad in proptest::collection::vec(any::<u8>(), 0..64),
        body in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        let keys = FolderSecret { epoch, bytes: secret }.keys(&FolderId(folder));
        let sealed = keys.seal_metadata(&aad, &body);
        prop_assert_eq!(sealed.len(), 24 + body.len() + 16);
        prop_assert_eq!(keys.open_metadata(&aad, &sealed).unwrap(), body.clone());
        // Keys derived again from the same secret open it too.
        let keys2 = FolderSecret { epoch, bytes: secret }.keys(&FolderId(folder));
        prop_assert_eq!(keys2.open_metadata(&aad, &sealed).unwrap(), body.clone());
        // Random nonces: sealing twice gives different bytes, both open.
        let sealed2 = keys.seal_metadata(&aad, &body);
        prop_assert_ne!(&sealed2, &sealed);
        prop_assert_eq!(keys.open_metadata(&aad, &sealed2).unwrap(), body);
    }

    #[test]
    fn chunk_seal_open(secret in any::<[u8; 32]>(), plaintext in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let c = SealedChunk::seal(&secret, &plaintext);
        prop_assert_eq!(c.len as usize, plaintext.len());
        prop_assert_eq!(c.ciphertext.len(), plaintext.len() + weft_crypto::chunk::CHUNK_OVERHEAD);
        prop_assert_eq!(c.id, ChunkId::of(&c.ciphertext));
        prop_assert!(c.id.check(&c.ciphertext).is_ok());
        prop_assert_eq!(c.key, ChunkKey::derive(&secret, &plaintext));
        prop_assert_eq!(SealedChunk::open(&c.id, &c.key, c.len, &c.ciphertext).unwrap(), plaintext.clone());
        prop_assert_eq!(c.key.open(&c.ciphertext).unwrap(), plaintext.clone());
        // Convergent: same secret and plaintext give the same chunk.
        prop_assert_eq!(&SealedChunk::seal(&secret, &plaintext), &c);
        // Another folder's secret gives another key, ciphertext and id.
        let mut other = secret;
        other[0] ^= 1;
        let d = SealedChunk::seal(&other, &plaintext);
        prop_assert_ne!(d.key, c.key);
        prop_assert_ne!(d.id, c.id);
        prop_assert!(c.key.open(&d.ciphertext).is_err());
    }

    #[test]
    fn wrap_unwrap(
        seed in any::<[u8; 32]>(),
        purpose in "[a-z-]{0,20}",
        context in proptest::collection::vec(any::<u8>(), 0..48),
        secret in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let person = SecretKey::from_seed(&seed);
        let w = wrap(&person.public(), &purpose, &context, &secret).unwrap();
        prop_assert_eq!(w.ciphertext.len(), secret.len() + 16);
        prop_assert_eq!(unwrap(&person, &purpose, &context, &w).unwrap(), secret.clone());
        // A fresh ephemeral key each time.
        let w2 = wrap(&person.public(), &purpose, &context, &secret).unwrap();
        prop_assert_ne!(w2.ephemeral, w.ephemeral);
        prop_assert_eq!(unwrap(&person, &purpose, &context, &w2).unwrap(), secret.clone());
        // Survives serialization.
        let w3: WrappedKey = postcard::from_bytes(&postcard::to_stdvec(&w).unwrap()).unwrap();
        prop_assert_eq!(&w3, &w);
    }
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn device_id_display_from_str(seed in any::<[u8; 32]>()) {
        let id = DeviceId(SecretKey::from_seed(&seed).public());
        let s = id.to_string();
        prop_assert!(s.starts_with("12D3KooW"), "{}", s);
        prop_assert_eq!(id.short(), s[8..15].to_string());
        prop_assert_eq!(DeviceId::from_str(&s).unwrap(), id);
    }

    #[test]
    fn person_id_display_from_str(seed in any::<[u8; 32]>()) {
        let id = PersonId(SecretKey::from_seed(&seed).public());
        let s = id.to_string();
        prop_assert_eq!(PersonId::from_str(&s).unwrap(), id);
        let fp = id.fingerprint();
        prop_assert_eq!(fp.len(), 8 * 5 + 7);
        prop_assert!(fp.split(' ').all(|g| g.len() == 5 && g.bytes().all(|b| b.is_ascii_digit())));
    }

    #[test]
    fn folder_id_display_from_str(b in any::<[u8; 16]>()) {
        let id = FolderId(b);
        let s = id.to_string();
        prop_assert_eq!(s.len(), 32);
        prop_assert_eq!(FolderId::from_str(&s).unwrap(), id);
    }

    #[test]
    fn hash_display_from_str(b in any::<[u8; 32]>()) {
        let h = Hash(b);
        let s = h.to_string();
        prop_assert_eq!(&s, &h.to_hex());
        prop_assert_eq!(Hash::from_str(&s).unwrap(), h);
        prop_assert_eq!(Hash::from_hex(&s).unwrap(), h);
        prop_assert_eq!(ChunkId::from_str(&s).unwrap(), ChunkId(h));
        prop_assert_eq!(ChunkId(h).to_string(), s);
    }

    /// A person id parses exactly when its bytes are a valid ed25519 point.
    #[test]
    fn person_id_parses_iff_valid_point(b in any::<[u8; 32]>()) {
        let s = bs58::encode(b).into_string();
        let valid = ed25519_dalek::VerifyingKey::from_bytes(&b).is_ok();
        prop_assert_eq!(PersonId::from_str(&s).is_ok(), valid);
    }
}

#[test]
fn hash_of_is_blake3() {
    assert_eq!(Hash::of(b"abc").0, *blake3::hash(b"abc").as_bytes());
    assert_eq!(Hash::ZERO.to_hex(), "0".repeat(64));
    assert_eq!(Hash::default(), Hash::ZERO);
}

#[test]
fn folder_secret_rotation_stops_at_the_last_epoch_instead_of_wrapping() {
    let last = FolderSecret {
        epoch: u32::MAX,
        bytes: [7; 32],
    };
    assert!(last.rotate().is_none());
}

#[test]
fn folder_secret_rotation_changes_every_key() {
    let folder = FolderId::generate();
    let s0 = FolderSecret::generate();
    assert_eq!(s0.epoch, 0);
    let s1 = s0.rotate().unwrap();
    assert_eq!(s1.epoch, 1);
    assert_ne!(s1.bytes, s0.bytes);
    let s2 = s1.rotate().unwrap();
    assert_eq!(s2.epoch, 2);

    let k0 = s0.keys(&folder);
    let k1 = s1.keys(&folder);
    assert_eq!(k1.epoch(), 1);
    assert_ne!(k0.convergence_secret(), k1.convergence_secret());
    assert_ne!(
        SealedChunk::seal(k0.convergence_secret(), b"same bytes").id,
        SealedChunk::seal(k1.convergence_secret(), b"same bytes").id
    );
    // The metadata key changed too: neither epoch opens the other's bodies.
    let b0 = k0.seal_metadata(b"h", b"body");
    let b1 = k1.seal_metadata(b"h", b"body");
    assert!(k1.open_metadata(b"h", &b0).is_err());
    assert!(k0.open_metadata(b"h", &b1).is_err());
    assert_eq!(k0.open_metadata(b"h", &b0).unwrap(), b"body");
    assert_eq!(k1.open_metadata(b"h", &b1).unwrap(), b"body");

    // keys() is a pure function of (secret, epoch, folder).
    assert_eq!(
        s0.keys(&folder).convergence_secret(),
        k0.convergence_secret()
    );
    // And it depends on each of them.
    let other_folder = s0.keys(&FolderId::generate());
    assert_ne!(other_folder.convergence_secret(), k0.convergence_secret());
    let same_bytes_next_epoch = FolderSecret {
        epoch: 1,
        bytes: s0.bytes,
    }
    .keys(&folder);
    assert_ne!(
        same_bytes_next_epoch.convergence_secret(),
        k0.convergence_secret()
    );
    assert!(same_bytes_next_epoch.open_metadata(b"h", &b0).is_err());
}

#[test]
fn generated_values_are_fresh() {
    assert_ne!(FolderId::generate(), FolderId::generate());
    assert_ne!(
        FolderSecret::generate().bytes,
        FolderSecret::generate().bytes
    );
    assert_ne!(
        SecretKey::generate().public(),
        SecretKey::generate().public()
    );
    assert_ne!(
        weft_crypto::random_bytes::<32>(),
        weft_crypto::random_bytes::<32>()
    );
}

#[test]
fn serde_round_trips() {
    let person = SecretKey::generate();
    let sig = person.sign("ctx", b"msg");
    let bytes = postcard::to_stdvec(&sig).unwrap();
    assert_eq!(bytes.len(), 1 + 64);
    // Decoding from an owned buffer that is dropped afterwards.
    let back: Signature = postcard::from_bytes(&bytes.clone()).unwrap();
    assert_eq!(back, sig);

    let cert = DeviceCertificate::issue(&person, DeviceId(SecretKey::generate().public()), "x", 5);
    let back: DeviceCertificate =
        postcard::from_bytes(&postcard::to_stdvec(&cert).unwrap()).unwrap();
    assert_eq!(back, cert);
    assert_eq!(postcard::to_stdvec(&cert).unwrap(), cert.to_bytes());

    let id = DeviceId(person.public());
    let back: DeviceId = postcard::from_bytes(&postcard::to_stdvec(&id).unwrap()).unwrap();
    assert_eq!(back, id);
    let fs = FolderSecret::generate();
    let back: FolderSecret = postcard::from_bytes(&postcard::to_stdvec(&fs).unwrap()).unwrap();
    assert_eq!(back, fs);
}

#[test]
fn debug_output_hides_secrets() {
    let sk = SecretKey::from_seed(&[7u8; 32]);
    let seed_hex = hex::encode([7u8; 32]);
    assert!(!format!("{sk:?}").contains(&seed_hex));
    let fs = FolderSecret {
        epoch: 3,
        bytes: [0xab; 32],
    };
    assert!(!format!("{fs:?}").contains("abab"));
    let keys = fs.keys(&FolderId([0; 16]));
    let dbg = format!("{keys:?}");
    assert!(!dbg.contains(&hex::encode(keys.convergence_secret())[..8]));
    let ck = ChunkKey([0xcd; 32]);
    assert!(!format!("{ck:?}").contains("cdcd"));
    // Ids print something short and do not panic.
    let _ = format!(
        "{:?} {:?} {:?} {:?}",
        DeviceId(sk.public()),
        PersonId(sk.public()),
        FolderId([0; 16]),
        Hash::ZERO
    );
}
