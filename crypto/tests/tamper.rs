//! Tampering: one flipped bit anywhere in anything authenticated is rejected, and so
//! is every wrong key, purpose, context or owner.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use weft_crypto::identity::CertificateBody;
use weft_crypto::wrap::{WrappedKey, unwrap, wrap};
use weft_crypto::{
    ChunkId, ChunkKey, CryptoError, DeviceCertificate, DeviceId, FolderId, FolderSecret, PersonId,
    SealedChunk, SecretKey, Signature,
};

/// Every (byte, bit) position of a buffer of `len` bytes.
fn every_bit(len: usize) -> impl Iterator<Item = (usize, u8)> {
    (0..len).flat_map(|i| (0..8).map(move |b| (i, 1u8 << b)))
}

fn flipped(data: &[u8], i: usize, mask: u8) -> Vec<u8> {
    let mut v = data.to_vec();
    v[i] ^= mask;
    v
}

fn keys() -> weft_crypto::FolderKeys {
    FolderSecret::generate().keys(&FolderId::generate())
}

// ---- chunks ----------------------------------------------------------------------

#[test]
fn chunk_every_bit_flip_is_rejected() {
    let secret = FolderSecret::generate().keys(&FolderId::generate());
    let c = SealedChunk::seal(
        secret.convergence_secret(),
        b"some file contents, one chunk",
    );
    for (i, m) in every_bit(c.ciphertext.len()) {
        let bad = flipped(&c.ciphertext, i, m);
        assert!(
            c.key.open(&bad).is_err(),
            "open accepted flip at {i}/{m:#x}"
        );
        assert!(
            matches!(c.id.check(&bad), Err(CryptoError::ChunkIdMismatch { .. })),
            "id check accepted flip at {i}/{m:#x}"
        );
        assert!(SealedChunk::open(&c.id, &c.key, c.len, &bad).is_err());
        // Even when the attacker also hands over the matching id.
        assert!(SealedChunk::open(&ChunkId::of(&bad), &c.key, c.len, &bad).is_err());
    }
    // Truncated or extended.
    for n in 0..c.ciphertext.len() {
        assert!(c.key.open(&c.ciphertext[..n]).is_err());
        assert!(c.id.check(&c.ciphertext[..n]).is_err());
    }
    let mut longer = c.ciphertext.clone();
    longer.push(0);
    assert!(c.key.open(&longer).is_err());
    assert!(c.id.check(&longer).is_err());
    // Unmodified, it opens.
    assert!(SealedChunk::open(&c.id, &c.key, c.len, &c.ciphertext).is_ok());
}

#[test]
fn chunk_wrong_key_id_or_length_is_rejected() {
    let secret = [9u8; 32];
    let c = SealedChunk::seal(&secret, b"chunk");
    let other = SealedChunk::seal(&secret, b"other chunk");
    assert!(SealedChunk::open(&c.id, &other.key, c.len, &c.ciphertext).is_err());
    assert!(SealedChunk::open(&other.id, &c.key, c.len, &c.ciphertext).is_err());
    assert!(matches!(
        SealedChunk::open(&c.id, &c.key, c.len + 1, &c.ciphertext),
        Err(CryptoError::Length { .. })
    ));
    assert!(SealedChunk::open(&c.id, &c.key, c.len - 1, &c.ciphertext).is_err());
    for (i, m) in every_bit(32) {
        let mut k = c.key.0;
        k[i] ^= m;
        assert!(ChunkKey(k).open(&c.ciphertext).is_err());
    }
    // A key derived under another folder's convergence secret does not open it.
    let mut s2 = secret;
    s2[31] ^= 0x80;
    assert!(ChunkKey::derive(&s2, b"chunk").open(&c.ciphertext).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn chunk_random_flip_is_rejected(
        plaintext in proptest::collection::vec(any::<u8>(), 0..4096),
        pos in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let c = SealedChunk::seal(&[1u8; 32], &plaintext);
        let bad = flipped(&c.ciphertext, pos.index(c.ciphertext.len()), 1 << bit);
        prop_assert!(c.key.open(&bad).is_err());
        prop_assert!(c.id.check(&bad).is_err());
        prop_assert!(SealedChunk::open(&c.id, &c.key, c.len, &bad).is_err());
    }
}

// ---- metadata --------------------------------------------------------------------

#[test]
fn metadata_every_bit_flip_of_body_or_aad_is_rejected() {
    let k = keys();
    let aad = b"header: v1, folder, device, seq 17".to_vec();
    let sealed = k.seal_metadata(&aad, b"path=/a/b.txt manifest=...");
    assert!(k.open_metadata(&aad, &sealed).is_ok());
    // Nonce, ciphertext and tag.
    for (i, m) in every_bit(sealed.len()) {
        assert!(
            k.open_metadata(&aad, &flipped(&sealed, i, m)).is_err(),
            "body flip at {i}/{m:#x} accepted"
        );
    }
    for (i, m) in every_bit(aad.len()) {
        assert!(
            k.open_metadata(&flipped(&aad, i, m), &sealed).is_err(),
            "aad flip at {i}/{m:#x} accepted"
        );
    }
    // Truncated, extended, other aad lengths.
    for n in 0..sealed.len() {
        assert!(k.open_metadata(&aad, &sealed[..n]).is_err());
    }
    let mut longer = sealed.clone();
    longer.push(0);
    assert!(k.open_metadata(&aad, &longer).is_err());
    assert!(k.open_metadata(&aad[..aad.len() - 1], &sealed).is_err());
    assert!(
        k.open_metadata(&[aad.as_slice(), b"x"].concat(), &sealed)
            .is_err()
    );
    assert!(k.open_metadata(b"", &sealed).is_err());
    // Another folder's keys.
    assert!(keys().open_metadata(&aad, &sealed).is_err());
}

#[test]
fn metadata_body_cannot_move_under_another_header() {
    let k = keys();
    let a = k.seal_metadata(b"header A", b"body A");
    let b = k.seal_metadata(b"header B", b"body B");
    assert!(k.open_metadata(b"header B", &a).is_err());
    assert!(k.open_metadata(b"header A", &b).is_err());
    // Splicing one body's nonce onto another's ciphertext fails too.
    let spliced = [&a[..24], &b[24..]].concat();
    assert!(k.open_metadata(b"header B", &spliced).is_err());
    assert!(k.open_metadata(b"header A", &spliced).is_err());
}

// ---- signatures ------------------------------------------------------------------

#[test]
fn signature_every_bit_flip_of_signature_or_message_is_rejected() {
    let sk = SecretKey::generate();
    let pk = sk.public();
    let msg = b"log entry 42: add /photos/cat.jpg".to_vec();
    let sig = sk.sign("log-entry", &msg);
    assert!(pk.verify("log-entry", &msg, &sig).is_ok());
    for (i, m) in every_bit(64) {
        let bad = Signature(flipped(&sig.0, i, m).try_into().unwrap());
        assert_eq!(
            pk.verify("log-entry", &msg, &bad),
            Err(CryptoError::BadSignature),
            "signature flip at {i}/{m:#x} accepted"
        );
    }
    for (i, m) in every_bit(msg.len()) {
        assert!(
            pk.verify("log-entry", &flipped(&msg, i, m), &sig).is_err(),
            "message flip at {i}/{m:#x} accepted"
        );
    }
    assert!(pk.verify("log-entry", &msg[..msg.len() - 1], &sig).is_err());
    assert!(
        pk.verify("log-entry", &[msg.as_slice(), b"\0"].concat(), &sig)
            .is_err()
    );
    // Another key.
    assert!(
        SecretKey::generate()
            .public()
            .verify("log-entry", &msg, &sig)
            .is_err()
    );
    // A public key with a flipped bit: not a key, or not the signer.
    for (i, m) in every_bit(32) {
        let bad = weft_crypto::PublicKey(flipped(&pk.0, i, m).try_into().unwrap());
        assert!(bad.verify("log-entry", &msg, &sig).is_err());
    }
}

#[test]
fn signature_is_bound_to_its_context() {
    let sk = SecretKey::generate();
    let sig = sk.sign("log-entry", b"m");
    for other in [
        "",
        "log-entr",
        "log-entry ",
        "Log-entry",
        "device-certificate",
        "log-entry\u{0}",
    ] {
        assert!(sk.public().verify(other, b"m", &sig).is_err(), "{other:?}");
    }
    // The context/message boundary cannot be moved: ("a", "b\0c") and ("a\0b", "c")
    // would be the same bytes, so contexts containing NUL are refused.
    let sig = sk.sign("a", b"b\0c");
    assert!(sk.public().verify("a", b"b\0c", &sig).is_ok());
    assert_eq!(
        sk.public().verify("a\0b", b"c", &sig),
        Err(CryptoError::BadSignature)
    );
    // Nor can it be moved the other way: ("ab", "c") vs ("a", "b...").
    let sig = sk.sign("ab", b"c");
    assert!(sk.public().verify("a", b"b\0c", &sig).is_err());
}

#[test]
fn small_order_public_keys_never_verify() {
    // The identity point and a point of order 4: any "signature" must be refused.
    let sk = SecretKey::generate();
    let sig = sk.sign("ctx", b"m");
    let mut identity = [0u8; 32];
    identity[0] = 1;
    for k in [identity, [0u8; 32]] {
        let pk = weft_crypto::PublicKey(k);
        assert!(pk.verify("ctx", b"m", &sig).is_err());
        // R = identity, s = 0 is a "valid" signature for a small-order key under
        // cofactored or non-strict verification.
        let mut forged = [0u8; 64];
        forged[0] = 1;
        assert!(pk.verify("ctx", b"m", &Signature(forged)).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn signature_under_one_context_fails_under_another(
        seed in any::<[u8; 32]>(),
        a in "[a-z-]{0,12}",
        b in "[a-z-]{0,12}",
        msg in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        prop_assume!(a != b);
        let sk = SecretKey::from_seed(&seed);
        let sig = sk.sign(&a, &msg);
        prop_assert!(sk.public().verify(&a, &msg, &sig).is_ok());
        prop_assert!(sk.public().verify(&b, &msg, &sig).is_err());
    }
}

// ---- certificates ----------------------------------------------------------------

fn sample_cert() -> (SecretKey, DeviceCertificate) {
    let person = SecretKey::generate();
    let device = DeviceId(SecretKey::generate().public());
    let cert = DeviceCertificate::issue(&person, device, "kitchen laptop", 1_712_345_678_901);
    (person, cert)
}

#[test]
fn certificate_every_bit_flip_is_rejected() {
    let (_, cert) = sample_cert();
    let bytes = cert.to_bytes();
    assert!(DeviceCertificate::from_bytes(&bytes).is_ok());
    for (i, m) in every_bit(bytes.len()) {
        let bad = flipped(&bytes, i, m);
        match DeviceCertificate::from_bytes(&bad) {
            Err(_) => {}
            Ok(c) => panic!("flip at {i}/{m:#x} accepted: {c:?}"),
        }
        // Decoding without the checks may succeed, but the result never verifies
        // unless it is the original certificate.
        if let Ok(c) = postcard::from_bytes::<DeviceCertificate>(&bad)
            && c != cert
        {
            assert!(c.verify(None).is_err(), "flip at {i}/{m:#x} verified");
        }
    }
}

#[test]
fn certificate_truncated_extended_or_non_canonical_is_rejected() {
    let (_, cert) = sample_cert();
    let bytes = cert.to_bytes();
    for n in 0..bytes.len() {
        assert!(DeviceCertificate::from_bytes(&bytes[..n]).is_err(), "{n}");
    }
    // Trailing bytes: postcard would ignore them.
    for extra in [&[0u8][..], &[1, 2, 3], &bytes] {
        let longer = [bytes.as_slice(), extra].concat();
        assert!(DeviceCertificate::from_bytes(&longer).is_err());
    }
    // An over-long varint for the name's length (14 = 0x0e, written as 0x8e 0x00)
    // decodes to the same certificate but is not its encoding.
    let name_len_at = 1 + 32 + 32;
    assert_eq!(bytes[name_len_at], 14);
    let overlong = [
        &bytes[..name_len_at],
        &[0x8e, 0x00],
        &bytes[name_len_at + 1..],
    ]
    .concat();
    assert_eq!(
        postcard::from_bytes::<DeviceCertificate>(&overlong).unwrap(),
        cert
    );
    assert!(DeviceCertificate::from_bytes(&overlong).is_err());
}

/// One change to a certificate's body.
type Edit = Box<dyn Fn(&mut CertificateBody)>;

#[test]
fn certificate_with_changed_content_does_not_verify() {
    let (person, cert) = sample_cert();
    let other = SecretKey::generate();
    let mut edits: Vec<Edit> = vec![
        Box::new(|b| b.name.push('!')),
        Box::new(|b| b.name = "phone".into()),
        Box::new(|b| b.issued_at_ms += 1),
        Box::new(|b| b.issued_at_ms = 0),
        Box::new(|b| b.device = DeviceId(SecretKey::generate().public())),
    ];
    let other_pub = other.public();
    edits.push(Box::new(move |b| b.person = PersonId(other_pub)));
    for (n, edit) in edits.iter().enumerate() {
        let mut c = cert.clone();
        edit(&mut c.body);
        assert_ne!(c, cert);
        assert!(c.verify(None).is_err(), "edit {n} verified");
        assert!(
            DeviceCertificate::from_bytes(&c.to_bytes()).is_err(),
            "edit {n} decoded"
        );
    }
    // Another version is refused even when properly signed.
    let mut body = cert.body.clone();
    body.version = 2;
    let sig = person.sign("device-certificate", &postcard::to_stdvec(&body).unwrap());
    let v2 = DeviceCertificate {
        body,
        signature: sig,
    };
    assert_eq!(
        v2.verify(None),
        Err(CryptoError::Certificate("unknown certificate version"))
    );
    // The body signed under another context (say, a log entry) is not a certificate.
    let sig = person.sign("log-entry", &postcard::to_stdvec(&cert.body).unwrap());
    let c = DeviceCertificate {
        body: cert.body.clone(),
        signature: sig,
    };
    assert!(c.verify(None).is_err());
    // A signature by someone else over the same body.
    let c = DeviceCertificate {
        body: cert.body.clone(),
        signature: other.sign(
            "device-certificate",
            &postcard::to_stdvec(&cert.body).unwrap(),
        ),
    };
    assert!(c.verify(None).is_err());
}

#[test]
fn certificate_for_another_person_is_rejected() {
    let (person, cert) = sample_cert();
    let mallory = SecretKey::generate();
    assert!(cert.verify(Some(&PersonId(person.public()))).is_ok());
    assert_eq!(
        cert.verify(Some(&PersonId(mallory.public()))),
        Err(CryptoError::Certificate(
            "certificate is for another person"
        ))
    );
    // Mallory certifying the same device: valid on its own, refused for the owner.
    let forged = DeviceCertificate::issue(&mallory, cert.body.device, "laptop", 1);
    assert!(forged.verify(None).is_ok());
    assert!(forged.verify(Some(&PersonId(person.public()))).is_err());
    // Rewriting the person field to the owner breaks the signature.
    let mut relabelled = forged.clone();
    relabelled.body.person = PersonId(person.public());
    assert!(relabelled.verify(Some(&PersonId(person.public()))).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Any single-byte substitution anywhere in a certificate is refused.
    #[test]
    fn certificate_random_byte_substitution_is_rejected(
        pos in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let (_, cert) = sample_cert();
        let bytes = cert.to_bytes();
        let i = pos.index(bytes.len());
        prop_assume!(bytes[i] != byte);
        let mut bad = bytes.clone();
        bad[i] = byte;
        prop_assert!(DeviceCertificate::from_bytes(&bad).is_err());
    }
}

// ---- key wrapping ----------------------------------------------------------------

#[test]
fn wrapped_key_every_bit_flip_is_rejected() {
    let person = SecretKey::generate();
    let folder = FolderId::generate();
    let w = wrap(&person.public(), "folder-secret", &folder.0, &[7u8; 32]).unwrap();
    assert!(unwrap(&person, "folder-secret", &folder.0, &w).is_ok());
    // Every bit of the ephemeral key, including bit 255, which X25519 itself ignores:
    // the wrapping key is bound to the ephemeral bytes as sent.
    for (i, m) in every_bit(32) {
        let bad = WrappedKey {
            ephemeral: flipped(&w.ephemeral, i, m).try_into().unwrap(),
            ciphertext: w.ciphertext.clone(),
        };
        assert!(
            unwrap(&person, "folder-secret", &folder.0, &bad).is_err(),
            "ephemeral flip at {i}/{m:#x} accepted"
        );
    }
    for (i, m) in every_bit(w.ciphertext.len()) {
        let bad = WrappedKey {
            ephemeral: w.ephemeral,
            ciphertext: flipped(&w.ciphertext, i, m),
        };
        assert!(
            unwrap(&person, "folder-secret", &folder.0, &bad).is_err(),
            "ciphertext flip at {i}/{m:#x} accepted"
        );
    }
    for n in 0..w.ciphertext.len() {
        let bad = WrappedKey {
            ephemeral: w.ephemeral,
            ciphertext: w.ciphertext[..n].to_vec(),
        };
        assert!(unwrap(&person, "folder-secret", &folder.0, &bad).is_err());
    }
}

#[test]
fn wrapped_key_is_bound_to_purpose_context_and_person() {
    let person = SecretKey::generate();
    let folder = FolderId::generate();
    let w = wrap(&person.public(), "folder-secret", &folder.0, b"s3cret").unwrap();
    assert_eq!(
        unwrap(&person, "folder-secret", &folder.0, &w).unwrap(),
        b"s3cret"
    );
    for purpose in [
        "",
        "folder-secre",
        "folder-secret ",
        "pairing",
        "share-link",
    ] {
        assert!(
            unwrap(&person, purpose, &folder.0, &w).is_err(),
            "{purpose:?}"
        );
    }
    // Another folder's id as context, or any bit of it flipped.
    assert!(unwrap(&person, "folder-secret", &FolderId::generate().0, &w).is_err());
    assert!(unwrap(&person, "folder-secret", &[], &w).is_err());
    for (i, m) in every_bit(16) {
        assert!(unwrap(&person, "folder-secret", &flipped(&folder.0, i, m), &w).is_err());
    }
    // Another person's key.
    assert!(unwrap(&SecretKey::generate(), "folder-secret", &folder.0, &w).is_err());
    // The purpose/context boundary cannot be moved.
    let w = wrap(&person.public(), "a", b"b\0c", b"x").unwrap();
    assert!(unwrap(&person, "a\0b", b"c", &w).is_err());
    assert!(wrap(&person.public(), "a\0b", b"c", b"x").is_err());
}

#[test]
fn wrapping_to_a_small_order_key_is_refused() {
    let mut identity = [0u8; 32];
    identity[0] = 1;
    for k in [identity, [0u8; 32]] {
        assert!(wrap(&weft_crypto::PublicKey(k), "p", b"", b"secret").is_err());
    }
    // Not a curve point at all.
    let not_a_point = (0u8..=255)
        .map(|b| [b; 32])
        .find(|k| ed25519_dalek::VerifyingKey::from_bytes(k).is_err())
        .unwrap();
    assert_eq!(
        wrap(&weft_crypto::PublicKey(not_a_point), "p", b"", b"secret"),
        Err(CryptoError::BadPublicKey)
    );
    // A low-order ephemeral key on the receiving side.
    let person = SecretKey::generate();
    let w = WrappedKey {
        ephemeral: [0u8; 32],
        ciphertext: vec![0u8; 48],
    };
    assert!(unwrap(&person, "p", b"", &w).is_err());
}
