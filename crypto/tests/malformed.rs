//! Malformed input is an error, never a panic, and never slow.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use std::str::FromStr;
use std::time::{Duration, Instant};
use weft_crypto::wrap::{WrappedKey, unwrap};
use weft_crypto::{
    ChunkId, ChunkKey, DeviceCertificate, DeviceId, FolderId, FolderSecret, Hash, PersonId,
    SealedChunk, SecretKey, Signature,
};

/// Parses `s` as every id type; whatever parses prints back to an equivalent string.
fn parse_all(s: &str) {
    if let Ok(id) = DeviceId::from_str(s) {
        assert_eq!(id.to_string(), s, "device id is not canonical");
    }
    if let Ok(id) = PersonId::from_str(s) {
        assert_eq!(id.to_string(), s, "person id is not canonical");
    }
    // Hex parsing accepts either case; printing is lowercase.
    if let Ok(id) = FolderId::from_str(s) {
        assert_eq!(id.to_string(), s.to_ascii_lowercase());
    }
    if let Ok(h) = Hash::from_str(s) {
        assert_eq!(h.to_string(), s.to_ascii_lowercase());
        assert_eq!(Hash::from_hex(s).unwrap(), h);
    }
    if let Ok(c) = ChunkId::from_str(s) {
        assert_eq!(c.to_string(), s.to_ascii_lowercase());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn ids_from_any_string(s in any::<String>()) {
        parse_all(&s);
    }

    /// Strings from the base58 alphabet, around the lengths of real ids, get past the
    /// alphabet check and exercise the length, prefix and curve-point checks.
    #[test]
    fn ids_from_base58_strings(s in "[1-9A-HJ-NP-Za-km-z]{0,60}") {
        parse_all(&s);
    }

    #[test]
    fn ids_from_peer_id_like_strings(s in "12D3KooW[1-9A-HJ-NP-Za-km-z]{40,48}") {
        parse_all(&s);
    }

    #[test]
    fn ids_from_hex_strings(s in "[0-9a-fA-F]{0,70}") {
        parse_all(&s);
    }

    #[test]
    fn certificate_from_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..300)) {
        prop_assert!(DeviceCertificate::from_bytes(&b).is_err());
        let _ = postcard::from_bytes::<DeviceCertificate>(&b);
        let _ = postcard::from_bytes::<Signature>(&b);
        let _ = postcard::from_bytes::<WrappedKey>(&b);
    }

    /// Valid-looking prefixes (version 1, a real person key) followed by garbage.
    #[test]
    fn certificate_from_plausible_bytes(tail in proptest::collection::vec(any::<u8>(), 0..200)) {
        let person = SecretKey::from_seed(&[3u8; 32]).public();
        let mut b = vec![1u8];
        b.extend_from_slice(&person.0);
        b.extend_from_slice(&tail);
        prop_assert!(DeviceCertificate::from_bytes(&b).is_err());
    }

    #[test]
    fn open_metadata_on_garbage(b in proptest::collection::vec(any::<u8>(), 0..128), aad in proptest::collection::vec(any::<u8>(), 0..16)) {
        let keys = FolderSecret { epoch: 0, bytes: [5u8; 32] }.keys(&FolderId([6u8; 16]));
        prop_assert!(keys.open_metadata(&aad, &b).is_err());
    }

    #[test]
    fn chunk_open_on_garbage(b in proptest::collection::vec(any::<u8>(), 0..128), len in any::<u32>()) {
        let key = ChunkKey([8u8; 32]);
        prop_assert!(key.open(&b).is_err());
        prop_assert!(SealedChunk::open(&ChunkId::of(&b), &key, len, &b).is_err());
    }

    #[test]
    fn unwrap_on_garbage(ephemeral in any::<[u8; 32]>(), ct in proptest::collection::vec(any::<u8>(), 0..96)) {
        let person = SecretKey::from_seed(&[4u8; 32]);
        let w = WrappedKey { ephemeral, ciphertext: ct };
        prop_assert!(unwrap(&person, "p", b"c", &w).is_err());
    }
}

#[test]
fn open_metadata_on_short_input() {
    let keys = FolderSecret::generate().keys(&FolderId::generate());
    for n in 0..=64 {
        for fill in [0x00, 0xff] {
            assert!(keys.open_metadata(b"", &vec![fill; n]).is_err(), "{n}");
            assert!(keys.open_metadata(b"aad", &vec![fill; n]).is_err(), "{n}");
        }
    }
}

#[test]
fn chunk_and_wrap_on_short_input() {
    let key = ChunkKey([1u8; 32]);
    let person = SecretKey::generate();
    for n in 0..=32 {
        let b = vec![0u8; n];
        assert!(key.open(&b).is_err());
        assert!(SealedChunk::open(&ChunkId::of(&b), &key, 0, &b).is_err());
        let w = WrappedKey {
            ephemeral: person.public().0,
            ciphertext: b,
        };
        assert!(unwrap(&person, "p", b"", &w).is_err());
    }
}

#[test]
fn specific_bad_ids() {
    let good_device = DeviceId(SecretKey::from_seed(&[1u8; 32]).public()).to_string();
    let good_person = PersonId(SecretKey::from_seed(&[1u8; 32]).public()).to_string();
    let cases = [
        String::new(),
        " ".into(),
        "0".into(),
        "O".into(),
        "l".into(),
        "I".into(),
        "12D3KooW".into(),
        format!(" {good_device}"),
        format!("{good_device} "),
        format!("{good_device}1"),
        format!("1{good_device}"),
        good_device[..good_device.len() - 1].to_string(),
        format!("1{good_person}"),
        format!("{good_person}1"),
        good_person[..good_person.len() - 1].to_string(),
        "Qm".to_string() + &"1".repeat(44), // a sha2-256 style peer id shape
        "é".repeat(30),
        "\u{0}".repeat(64),
        "g".repeat(64),
        "0".repeat(63),
        "0".repeat(65),
        "0".repeat(31),
        "0".repeat(33),
    ];
    for s in &cases {
        parse_all(s);
    }
    assert!(DeviceId::from_str(&good_device).is_ok());
    assert!(PersonId::from_str(&good_person).is_ok());
    // A person id is not a device id and vice versa.
    assert!(DeviceId::from_str(&good_person).is_err());
    assert!(PersonId::from_str(&good_device).is_err());
    // The right length and prefix, but the key is not a curve point.
    let not_a_point = (0u8..=255)
        .map(|b| [b; 32])
        .find(|k| ed25519_dalek::VerifyingKey::from_bytes(k).is_err())
        .unwrap();
    let mut peer = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    peer.extend_from_slice(&not_a_point);
    assert!(DeviceId::from_str(&bs58::encode(&peer).into_string()).is_err());
    assert!(PersonId::from_str(&bs58::encode(not_a_point).into_string()).is_err());
    // The right length, but another key type (secp256k1 = 2).
    peer[3] = 2;
    peer[6..].copy_from_slice(&SecretKey::generate().public().0);
    assert!(DeviceId::from_str(&bs58::encode(&peer).into_string()).is_err());
}

#[test]
fn huge_id_strings_are_refused_quickly() {
    let huge = "z".repeat(1 << 20);
    let start = Instant::now();
    assert!(DeviceId::from_str(&huge).is_err());
    assert!(PersonId::from_str(&huge).is_err());
    assert!(FolderId::from_str(&huge).is_err());
    assert!(Hash::from_str(&"a".repeat(1 << 20)).is_err());
    assert!(start.elapsed() < Duration::from_secs(2));
}
