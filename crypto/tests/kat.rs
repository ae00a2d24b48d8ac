//! Known-answer tests: pin every derivation and encoding to exact bytes, so that an
//! accidental change to any of them (a label, an input order, a prefix, a nonce)
//! breaks a test instead of silently forking the format.
//!
//! The expected values were produced once by running this crate, and each is also
//! recomputed here independently, straight from the underlying primitives
//! (`ed25519-dalek`, `x25519-dalek`, `blake3`, `chacha20poly1305`, `bs58`), following
//! the formats as the design describes them. Some were in addition checked outside
//! Rust when they were written (see the comments).
#![allow(clippy::unwrap_used)]

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use weft_crypto::wrap::{WrappedKey, unwrap};
use weft_crypto::{
    ChunkId, ChunkKey, DeviceCertificate, DeviceId, FolderId, FolderSecret, PersonId, SealedChunk,
    SecretKey,
};

// ---- fixed inputs ----------------------------------------------------------------

/// The ed25519 seed of the libp2p peer-id spec's test vector (its `PrivateKey`
/// protobuf is `08 01 12 40 <seed> <public>`), used as the device key so that the
/// DeviceId can be compared with a PeerId other libp2p implementations agree on.
const DEVICE_SEED: &str = "7e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d";
/// The person key's seed: bytes 0, 1, …, 31.
fn person_seed() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}
const FOLDER_ID: &str = "00112233445566778899aabbccddeeff";
/// The folder secret: bytes 0x80, 0x81, …, 0x9f.
fn secret_bytes() -> [u8; 32] {
    std::array::from_fn(|i| 0x80 + i as u8)
}
const CHUNK_PLAINTEXT: &[u8] = b"weft known-answer test chunk\n";
const SIG_CONTEXT: &str = "weft-kat";
const SIG_MESSAGE: &[u8] = b"hello weft";

// ---- expected values -------------------------------------------------------------

/// The public key of the libp2p spec vector (`08 01 12 20 <this>`).
const DEVICE_PUBLIC: &str = "1ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e";
/// The PeerId of that key, as rust-libp2p / go-libp2p print it.
const DEVICE_ID: &str = "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq";
const DEVICE_SHORT: &str = "Btg3aaR";
/// Also the public key OpenSSL (Python `cryptography`) gives for seed 00 01 … 1f.
const PERSON_PUBLIC: &str = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8";
const PERSON_ID: &str = "FAe4sisG95oZ42w7buUn5qEE4TAnfTTFPiguZUHmhiF";
const PERSON_FINGERPRINT: &str = "49555 30771 75066 11473 17113 39107 44140 90308";
/// Also the signature OpenSSL gives over `"weft-sig-v1\0weft-kat\0hello weft"`.
const SIGNATURE: &str = "ff45a7eae800ef28f0e50dc3c852024d5d2d617f21c6afe87bfb9a9a4e637013\
                         2da7a90dc94a693fbbe1ba7ecb91f4933a7dc42606fa6d1cb702499e563aba00";
/// `DeviceCertificate::issue(person, device, "laptop", 1_700_000_000_000).to_bytes()`.
const CERTIFICATE: &str = "01\
    03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8\
    1ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e\
    066c6170746f70\
    80d095ffbc31\
    40\
    cd0116fc2fb78dd4466490a299401bf3b83ef66de9b65dc6fa22ac7529345\
    8cc26717d2fede7fa3e5174242abf93184fbe3959c66c36023164f0930cdbf4d200";
const CERT_ISSUED_AT: u64 = 1_700_000_000_000;

/// Per epoch: (epoch, convergence secret, chunk key, chunk ciphertext, chunk id).
/// The epoch-0 ciphertext is also what OpenSSL's ChaCha20-Poly1305 gives for that key,
/// a zero nonce and no associated data.
const FOLDER_EPOCHS: [(u32, &str, &str, &str, &str); 2] = [
    (
        0,
        "4ee427e5c43f9b854c37e440dddefbab8a194fb1b8bef3e266255988ef7ade0c",
        "aa00e527d493b0683429c4ebe4e67603b599483b2ec936797d28b537f2864dec",
        "fe3469c07b8691314c9934fcec38c89afc2b0ce90ace1027bd7ecbcdfe32e5e7c50f275871af0a022cb80339d2",
        "1c3b4e2a42f335eb69c4b84521de6f33ba70c87f41cdb8352df0acdd77a95163",
    ),
    (
        7,
        "4062337f29d58d1828577e91192349158addd67831b756b18430d8e2e8247093",
        "b9672f5c9f6bc6fd4a6085d670cd3382af4e93acc8eaf1218fcd2122e600640e",
        "0102808d6c5829d0defaf8e73691beaf1a0702ba5345df5889e93b815bb124a7e59f7f15353ec43c3d03bc60a4",
        "f25b713f55ad7ee391723d61de7692dbbe6bf4e6272b13fbf7eae041391d1f34",
    ),
];

/// An entry body sealed under the epoch-0 metadata key: nonce a0 a1 … b7, then
/// ciphertext ‖ tag of `METADATA_PLAINTEXT` with associated data `METADATA_AAD`.
const METADATA_SEALED: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7\
    7c4d4a672f8493250a8eea9dd7d05ed5629720d8f83478bc0c9997f596b542594a839d0862";
const METADATA_PLAINTEXT: &[u8] = b"path: /notes/todo.txt";
const METADATA_AAD: &[u8] = b"entry header";

/// The X25519 public key derived from the person key (checked against OpenSSL:
/// X25519 public of SHA-512(seed)[..32]).
const PERSON_X25519: &str = "4701d08488451f545a409fb58ae3e58581ca40ac3f7f114698cd71deac73ca01";
/// A key wrapped to the person key with the ephemeral X25519 secret 55 55 … 55.
const WRAP_EPHEMERAL: &str = "38ab664bd86f77d7e66bdd9ae0792913a94fd8b33a1260027e4b46c1f4884c67";
const WRAP_CIPHERTEXT: &str = "a52c550e1e1b19ba7afc808971a4081c71ad102f313a0cb657eeb4e6c4781d97\
                               ac66cb625379cfa1f7e89d45413e9adb";
const WRAP_PURPOSE: &str = "folder-secret";
const WRAP_SECRET: [u8; 32] = [0x42; 32];

// ---- helpers ---------------------------------------------------------------------

fn h<const N: usize>(s: &str) -> [u8; N] {
    hex::decode(s).unwrap().try_into().unwrap()
}

fn device() -> SecretKey {
    SecretKey::from_seed(&h(DEVICE_SEED))
}

fn person() -> SecretKey {
    SecretKey::from_seed(&person_seed())
}

fn folder_id() -> FolderId {
    FolderId(h(FOLDER_ID))
}

/// The KDF input the design specifies: secret ‖ folder id ‖ epoch (u32 LE).
fn kdf_input(epoch: u32) -> Vec<u8> {
    let mut v = secret_bytes().to_vec();
    v.extend_from_slice(&h::<16>(FOLDER_ID));
    v.extend_from_slice(&epoch.to_le_bytes());
    v
}

/// The bytes a weft signature covers: `"weft-sig-v1" 0 <context> 0 <message>`.
fn weft_signed_bytes(context: &str, msg: &[u8]) -> Vec<u8> {
    [b"weft-sig-v1\0", context.as_bytes(), b"\0", msg].concat()
}

// ---- tests -----------------------------------------------------------------------

#[test]
fn kat_public_keys_from_seeds() {
    assert_eq!(hex::encode(device().public().0), DEVICE_PUBLIC);
    assert_eq!(hex::encode(person().public().0), PERSON_PUBLIC);
    // Independently: ed25519-dalek's own derivation.
    let sk = SigningKey::from_bytes(&person_seed());
    assert_eq!(sk.verifying_key().to_bytes(), person().public().0);
    // The seed survives a round trip.
    assert_eq!(*person().to_seed(), person_seed());
}

#[test]
fn kat_device_id_is_the_libp2p_peer_id() {
    let id = DeviceId(device().public());
    assert_eq!(id.to_string(), DEVICE_ID);
    assert!(id.to_string().starts_with("12D3KooW"));
    assert_eq!(id.short(), DEVICE_SHORT);

    // Independently, from the libp2p spec: PeerId = base58btc(identity multihash of
    // the protobuf `PublicKey { Type = Ed25519, Data = key }`), because the 36-byte
    // protobuf is at most 42 bytes.
    let key = h::<32>(DEVICE_PUBLIC);
    let mut protobuf = vec![
        1 << 3,       // field 1 (Type), wire type 0 (varint)
        1,            // KeyType::Ed25519
        (2 << 3) | 2, // field 2 (Data), wire type 2 (length-delimited)
        32,           // length
    ];
    protobuf.extend_from_slice(&key);
    assert_eq!(hex::encode(&protobuf), format!("08011220{DEVICE_PUBLIC}"));
    let mut multihash = vec![0x00, protobuf.len() as u8]; // identity, length 36
    multihash.extend_from_slice(&protobuf);
    assert_eq!(bs58::encode(&multihash).into_string(), DEVICE_ID);

    // And back.
    let parsed: DeviceId = DEVICE_ID.parse().unwrap();
    assert_eq!(parsed, id);
    assert_eq!(parsed.as_bytes(), &key);
}

#[test]
fn kat_person_id_and_fingerprint() {
    let id = PersonId(person().public());
    assert_eq!(id.to_string(), PERSON_ID);
    assert_eq!(id.fingerprint(), PERSON_FINGERPRINT);
    assert_eq!(PERSON_ID.parse::<PersonId>().unwrap(), id);

    // Independently: base58 of the raw key; the fingerprint is 8 groups of
    // (u32 LE % 100000) over derive_key("weft person fingerprint v1", key).
    assert_eq!(
        bs58::encode(h::<32>(PERSON_PUBLIC)).into_string(),
        PERSON_ID
    );
    let d = blake3::derive_key("weft person fingerprint v1", &h::<32>(PERSON_PUBLIC));
    let groups: Vec<String> = d
        .chunks(4)
        .map(|c| format!("{:05}", u32::from_le_bytes(c.try_into().unwrap()) % 100_000))
        .collect();
    assert_eq!(groups.join(" "), PERSON_FINGERPRINT);
}

#[test]
fn kat_signature() {
    let sig = person().sign(SIG_CONTEXT, SIG_MESSAGE);
    assert_eq!(hex::encode(sig.0), SIGNATURE);
    person()
        .public()
        .verify(SIG_CONTEXT, SIG_MESSAGE, &sig)
        .unwrap();

    // Independently: plain ed25519 (deterministic) over the domain-separated bytes.
    let signed = weft_signed_bytes(SIG_CONTEXT, SIG_MESSAGE);
    let sk = SigningKey::from_bytes(&person_seed());
    assert_eq!(sk.sign(&signed).to_bytes(), sig.0);
    let vk = VerifyingKey::from_bytes(&h(PERSON_PUBLIC)).unwrap();
    vk.verify_strict(
        &signed,
        &ed25519_dalek::Signature::from_bytes(&h(SIGNATURE)),
    )
    .unwrap();
    // The bare message (no domain separation) is not what was signed.
    assert!(
        vk.verify_strict(SIG_MESSAGE, &ed25519_dalek::Signature::from_bytes(&sig.0))
            .is_err()
    );
}

#[test]
fn kat_device_certificate_encoding() {
    let device_id = DeviceId(device().public());
    let cert = DeviceCertificate::issue(&person(), device_id, "laptop", CERT_ISSUED_AT);
    let bytes = cert.to_bytes();
    assert_eq!(hex::encode(&bytes), CERTIFICATE);
    let decoded = DeviceCertificate::from_bytes(&hex::decode(CERTIFICATE).unwrap()).unwrap();
    assert_eq!(decoded, cert);
    decoded.verify(Some(&PersonId(person().public()))).unwrap();

    // Independently: the postcard layout of the body, then a 64-byte signature made
    // under context "device-certificate" over exactly the body bytes.
    let mut body = vec![1u8]; // version
    body.extend_from_slice(&h::<32>(PERSON_PUBLIC));
    body.extend_from_slice(&h::<32>(DEVICE_PUBLIC));
    body.push(6); // name length
    body.extend_from_slice(b"laptop");
    let mut t = CERT_ISSUED_AT; // LEB128 varint
    while t >= 0x80 {
        body.push((t as u8) | 0x80);
        t >>= 7;
    }
    body.push(t as u8);
    assert_eq!(&bytes[..body.len()], &body[..]);
    assert_eq!(bytes[body.len()], 64);
    assert_eq!(bytes.len(), body.len() + 1 + 64);
    let sig = ed25519_dalek::Signature::from_bytes(&bytes[body.len() + 1..].try_into().unwrap());
    let vk = VerifyingKey::from_bytes(&h(PERSON_PUBLIC)).unwrap();
    vk.verify_strict(&weft_signed_bytes("device-certificate", &body), &sig)
        .unwrap();
}

#[test]
fn kat_folder_keys_chunk_key_ciphertext_and_id() {
    for (epoch, conv, key, ct, id) in FOLDER_EPOCHS {
        let keys = FolderSecret {
            epoch,
            bytes: secret_bytes(),
        }
        .keys(&folder_id());
        assert_eq!(keys.epoch(), epoch);
        assert_eq!(keys.folder(), folder_id());
        assert_eq!(
            hex::encode(keys.convergence_secret()),
            conv,
            "epoch {epoch}"
        );

        let chunk_key = ChunkKey::derive(keys.convergence_secret(), CHUNK_PLAINTEXT);
        assert_eq!(hex::encode(chunk_key.0), key, "epoch {epoch}");
        let sealed = SealedChunk::seal(keys.convergence_secret(), CHUNK_PLAINTEXT);
        assert_eq!(sealed.key, chunk_key);
        assert_eq!(sealed.len as usize, CHUNK_PLAINTEXT.len());
        assert_eq!(hex::encode(&sealed.ciphertext), ct, "epoch {epoch}");
        assert_eq!(sealed.id.to_string(), id, "epoch {epoch}");
        assert_eq!(
            SealedChunk::open(
                &sealed.id,
                &sealed.key,
                sealed.len,
                &hex::decode(ct).unwrap()
            )
            .unwrap(),
            CHUNK_PLAINTEXT
        );

        // Independently: derive_key over secret ‖ folder ‖ epoch; BLAKE3 keyed hash;
        // ChaCha20-Poly1305 with a zero nonce; BLAKE3 of the ciphertext.
        let conv_ref = blake3::derive_key("weft folder convergence secret v1", &kdf_input(epoch));
        assert_eq!(&conv_ref, keys.convergence_secret());
        let key_ref = *blake3::keyed_hash(&conv_ref, CHUNK_PLAINTEXT).as_bytes();
        assert_eq!(key_ref, chunk_key.0);
        let ct_ref = ChaCha20Poly1305::new(&Key::from(key_ref))
            .encrypt(&Nonce::from([0u8; 12]), CHUNK_PLAINTEXT)
            .unwrap();
        assert_eq!(ct_ref, sealed.ciphertext);
        assert_eq!(blake3::hash(&ct_ref).as_bytes(), &sealed.id.0.0);
        assert_eq!(ChunkId::of(&ct_ref), sealed.id);
    }
}

#[test]
fn kat_metadata_key() {
    let sealed = hex::decode(METADATA_SEALED).unwrap();

    // Independently: derive the metadata key and seal with a fixed nonce.
    let mk = blake3::derive_key("weft folder metadata key v1", &kdf_input(0));
    let nonce: [u8; 24] = std::array::from_fn(|i| 0xa0 + i as u8);
    let mut sealed_ref = nonce.to_vec();
    sealed_ref.extend(
        XChaCha20Poly1305::new(&Key::from(mk))
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: METADATA_PLAINTEXT,
                    aad: METADATA_AAD,
                },
            )
            .unwrap(),
    );
    assert_eq!(sealed_ref, sealed);

    // The crate's derived metadata key opens it, so both derivations agree.
    let keys0 = FolderSecret {
        epoch: 0,
        bytes: secret_bytes(),
    }
    .keys(&folder_id());
    assert_eq!(
        keys0.open_metadata(METADATA_AAD, &sealed).unwrap(),
        METADATA_PLAINTEXT
    );
    // The metadata key is not the convergence secret.
    assert_ne!(&mk, keys0.convergence_secret());

    // The key is bound to the epoch and to the folder id.
    let keys7 = FolderSecret {
        epoch: 7,
        bytes: secret_bytes(),
    }
    .keys(&folder_id());
    assert!(keys7.open_metadata(METADATA_AAD, &sealed).is_err());
    let other_folder = FolderSecret {
        epoch: 0,
        bytes: secret_bytes(),
    }
    .keys(&FolderId([0x11; 16]));
    assert!(other_folder.open_metadata(METADATA_AAD, &sealed).is_err());
}

#[test]
fn kat_key_wrap() {
    let wrapped = WrappedKey {
        ephemeral: h(WRAP_EPHEMERAL),
        ciphertext: hex::decode(WRAP_CIPHERTEXT).unwrap(),
    };
    let context = h::<16>(FOLDER_ID);
    assert_eq!(
        unwrap(&person(), WRAP_PURPOSE, &context, &wrapped).unwrap(),
        WRAP_SECRET
    );

    // Independently, the sender's side: the person's X25519 key is the Montgomery form
    // of the ed25519 key; key = derive_key("weft key wrap v1", dh ‖ eph ‖ recipient);
    // XChaCha20-Poly1305 with a zero nonce and aad = purpose ‖ 0 ‖ context.
    let their = x25519_dalek::PublicKey::from(
        VerifyingKey::from_bytes(&h(PERSON_PUBLIC))
            .unwrap()
            .to_montgomery()
            .to_bytes(),
    );
    assert_eq!(hex::encode(their.as_bytes()), PERSON_X25519);
    let eph = x25519_dalek::StaticSecret::from([0x55u8; 32]);
    let eph_pub = x25519_dalek::PublicKey::from(&eph);
    assert_eq!(hex::encode(eph_pub.as_bytes()), WRAP_EPHEMERAL);
    let dh = eph.diffie_hellman(&their);
    let kdf_in = [
        &dh.as_bytes()[..],
        &eph_pub.as_bytes()[..],
        &their.as_bytes()[..],
    ]
    .concat();
    let wk = blake3::derive_key("weft key wrap v1", &kdf_in);
    let aad = [WRAP_PURPOSE.as_bytes(), b"\0", &context[..]].concat();
    let ct = XChaCha20Poly1305::new(&Key::from(wk))
        .encrypt(
            &XNonce::from([0u8; 24]),
            Payload {
                msg: &WRAP_SECRET,
                aad: &aad,
            },
        )
        .unwrap();
    assert_eq!(hex::encode(ct), WRAP_CIPHERTEXT);
}
