//! Person and device identities.
//!
//! A **device key** is an ed25519 key generated on `weft init`; it is also the
//! device's libp2p identity, so [`DeviceId`] prints as the libp2p PeerId string.
//! A **person key** is an ed25519 key shared by all of one person's devices; it signs a
//! [`DeviceCertificate`] for each of them, and an X25519 key for key agreement is
//! derived from it (the standard Edwards→Montgomery map), so a person's public key
//! alone is enough to wrap a secret to them.
//!
//! Every signature is domain-separated: the signed bytes are
//! `"weft-sig-v1" 0 <context> 0 <message>`, so a signature made for one purpose can
//! never be replayed as another.
use crate::CryptoError;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::Zeroizing;

/// An ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature(#[serde(with = "sig_bytes")] pub [u8; 64]);

mod sig_bytes {
    //! Serde for the 64 signature bytes: written as a byte string; read from a byte
    //! string (borrowed, transient or owned) or a sequence of 64 integers, so that
    //! formats that do not lend out their input (readers, JSON) can decode it too.
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(b: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        d.deserialize_bytes(SigVisitor)
    }

    struct SigVisitor;

    impl<'de> Visitor<'de> for SigVisitor {
        type Value = [u8; 64];

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("64 signature bytes")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<[u8; 64], E> {
            v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; 64], A::Error> {
            let mut out = [0u8; 64];
            for (i, b) in out.iter_mut().enumerate() {
                *b = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(i, &self))?;
            }
            if seq.next_element::<u8>()?.is_some() {
                return Err(A::Error::invalid_length(65, &self));
            }
            Ok(out)
        }
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", hex::encode(&self.0[..6]))
    }
}

/// An ed25519 secret key (the 32-byte seed). Zeroed on drop.
pub struct SecretKey(SigningKey);

/// The bytes an ed25519 signature actually covers. `context` must not contain NUL:
/// it ends at the first NUL, so a NUL inside it would make `(context, msg)` pairs
/// ambiguous (`("a\0b", "c")` and `("a", "b\0c")` would sign the same bytes).
fn signed_message(context: &str, msg: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + context.len() + msg.len());
    m.extend_from_slice(b"weft-sig-v1\0");
    m.extend_from_slice(context.as_bytes());
    m.push(0);
    m.extend_from_slice(msg);
    m
}

impl SecretKey {
    /// A fresh random key.
    pub fn generate() -> SecretKey {
        SecretKey(SigningKey::from_bytes(&crate::random_bytes::<32>()))
    }

    /// Rebuilds a key from its 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> SecretKey {
        SecretKey(SigningKey::from_bytes(seed))
    }

    /// The 32-byte seed, for storing in a key file.
    pub fn to_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `msg` for the purpose named by `context`.
    ///
    /// `context` must not contain a NUL character (it is a fixed purpose name); a
    /// signature made under such a context never verifies.
    pub fn sign(&self, context: &str, msg: &[u8]) -> Signature {
        debug_assert!(!context.contains('\0'), "signature context contains NUL");
        Signature(self.0.sign(&signed_message(context, msg)).to_bytes())
    }

    /// The X25519 secret derived from this key (for a person key: key agreement).
    pub(crate) fn x25519_secret(&self) -> x25519_dalek::StaticSecret {
        x25519_dalek::StaticSecret::from(self.0.to_scalar_bytes())
    }
}

impl Clone for SecretKey {
    fn clone(&self) -> Self {
        SecretKey::from_seed(&self.to_seed())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {:?})", self.public())
    }
}

impl PublicKey {
    /// Checks `sig` over `msg` for the purpose `context` (strict verification:
    /// rejects small-order keys and non-canonical signatures).
    ///
    /// A `context` containing NUL is rejected: the domain separation would be ambiguous.
    pub fn verify(&self, context: &str, msg: &[u8], sig: &Signature) -> Result<(), CryptoError> {
        if context.contains('\0') {
            return Err(CryptoError::BadSignature);
        }
        let vk = VerifyingKey::from_bytes(&self.0).map_err(|_| CryptoError::BadPublicKey)?;
        let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
        vk.verify_strict(&signed_message(context, msg), &sig)
            .map_err(|_| CryptoError::BadSignature)
    }

    /// The X25519 public key derived from this ed25519 key.
    pub(crate) fn x25519_public(&self) -> Result<x25519_dalek::PublicKey, CryptoError> {
        let vk = VerifyingKey::from_bytes(&self.0).map_err(|_| CryptoError::BadPublicKey)?;
        Ok(x25519_dalek::PublicKey::from(vk.to_montgomery().to_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", &hex::encode(self.0)[..12])
    }
}

/// The libp2p PeerId prefix for an ed25519 key: identity multihash (0x00, len 36)
/// of the protobuf `PublicKey { Type: Ed25519 (1), Data: 32 bytes }`.
const PEER_ID_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];

/// A device's id: its ed25519 public key, written as its libp2p PeerId (`12D3KooW…`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceId(pub PublicKey);

impl DeviceId {
    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0.0
    }

    /// The first characters of the id after the common `12D3KooW` prefix: enough to
    /// tell a person's devices apart in a file name or a listing.
    pub fn short(&self) -> String {
        let s = self.to_string();
        s.chars().skip(8).take(7).collect()
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut b = Vec::with_capacity(38);
        b.extend_from_slice(&PEER_ID_PREFIX);
        b.extend_from_slice(&self.0.0);
        f.write_str(&bs58::encode(b).into_string())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.short())
    }
}

impl std::str::FromStr for DeviceId {
    type Err = CryptoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // 38 bytes are at most 52 base58 digits; refuse longer input before the
        // (quadratic) base58 decoding.
        if s.len() > 52 {
            return Err(CryptoError::Parse {
                what: "device id",
                reason: "too long".into(),
            });
        }
        let b = bs58::decode(s).into_vec().map_err(|e| CryptoError::Parse {
            what: "device id",
            reason: e.to_string(),
        })?;
        if b.len() != 38 || b[..6] != PEER_ID_PREFIX {
            return Err(CryptoError::Parse {
                what: "device id",
                reason: "not an ed25519 PeerId".into(),
            });
        }
        let mut k = [0u8; 32];
        k.copy_from_slice(&b[6..]);
        VerifyingKey::from_bytes(&k).map_err(|_| CryptoError::BadPublicKey)?;
        Ok(DeviceId(PublicKey(k)))
    }
}

/// A person's id: their person public key, written in base58.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PersonId(pub PublicKey);

impl PersonId {
    /// A short fingerprint people compare out of band: 8 groups of 5 digits from a
    /// domain-separated hash of the key (about 130 bits).
    pub fn fingerprint(&self) -> String {
        let h = blake3::derive_key("weft person fingerprint v1", &self.0.0);
        let mut groups = Vec::with_capacity(8);
        for c in h.chunks(4).take(8) {
            let n = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) % 100_000;
            groups.push(format!("{n:05}"));
        }
        groups.join(" ")
    }
}

impl fmt::Display for PersonId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.0.0).into_string())
    }
}

impl fmt::Debug for PersonId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PersonId({})", &self.to_string()[..8])
    }
}

impl std::str::FromStr for PersonId {
    type Err = CryptoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // 32 bytes are at most 44 base58 digits; refuse longer input before the
        // (quadratic) base58 decoding.
        if s.len() > 44 {
            return Err(CryptoError::Parse {
                what: "person id",
                reason: "too long".into(),
            });
        }
        let b = bs58::decode(s).into_vec().map_err(|e| CryptoError::Parse {
            what: "person id",
            reason: e.to_string(),
        })?;
        let k: [u8; 32] = b.try_into().map_err(|v: Vec<u8>| CryptoError::Length {
            what: "person id",
            expected: 32,
            got: v.len(),
        })?;
        VerifyingKey::from_bytes(&k).map_err(|_| CryptoError::BadPublicKey)?;
        Ok(PersonId(PublicKey(k)))
    }
}

const CERT_CONTEXT: &str = "device-certificate";

/// The signed part of a [`DeviceCertificate`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateBody {
    /// Format version of this structure (1).
    pub version: u8,
    /// The person vouching for the device.
    pub person: PersonId,
    /// The device being certified.
    pub device: DeviceId,
    /// A human name for the device ("laptop").
    pub name: String,
    /// When it was issued, Unix milliseconds.
    pub issued_at_ms: u64,
}

/// A person's statement, signed with the person key, that a device key is theirs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCertificate {
    /// What is certified.
    pub body: CertificateBody,
    /// The person key's signature over the postcard encoding of `body`.
    pub signature: Signature,
}

impl DeviceCertificate {
    /// Certifies `device` as `person`'s, under `name`.
    pub fn issue(person: &SecretKey, device: DeviceId, name: &str, now_ms: u64) -> Self {
        let body = CertificateBody {
            version: 1,
            person: PersonId(person.public()),
            device,
            name: name.to_owned(),
            issued_at_ms: now_ms,
        };
        let bytes = postcard::to_stdvec(&body).unwrap_or_default();
        let signature = person.sign(CERT_CONTEXT, &bytes);
        DeviceCertificate { body, signature }
    }

    /// Checks the signature, the format version, and that the certificate names the
    /// expected person (when one is given).
    pub fn verify(&self, expected_person: Option<&PersonId>) -> Result<(), CryptoError> {
        if self.body.version != 1 {
            return Err(CryptoError::Certificate("unknown certificate version"));
        }
        if let Some(p) = expected_person
            && p != &self.body.person
        {
            return Err(CryptoError::Certificate(
                "certificate is for another person",
            ));
        }
        let bytes = postcard::to_stdvec(&self.body)
            .map_err(|_| CryptoError::Certificate("cannot encode"))?;
        self.body
            .person
            .0
            .verify(CERT_CONTEXT, &bytes, &self.signature)
    }

    /// Encodes for storage or the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes and verifies.
    ///
    /// Only the exact bytes [`DeviceCertificate::to_bytes`] produces are accepted:
    /// postcard alone ignores trailing bytes and accepts over-long varints, which
    /// would give one certificate many encodings (a problem wherever certificate
    /// bytes are stored, compared or hashed).
    pub fn from_bytes(b: &[u8]) -> Result<Self, CryptoError> {
        let c: DeviceCertificate = postcard::from_bytes(b).map_err(|e| CryptoError::Parse {
            what: "device certificate",
            reason: e.to_string(),
        })?;
        if c.to_bytes() != b {
            return Err(CryptoError::Parse {
                what: "device certificate",
                reason: "not the canonical encoding".into(),
            });
        }
        c.verify(None)?;
        Ok(c)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde::de::value::{BytesDeserializer, Error as ValueError, SeqDeserializer};

    #[test]
    fn signed_message_layout() {
        assert_eq!(signed_message("ctx", b"msg"), b"weft-sig-v1\0ctx\0msg");
        assert_eq!(signed_message("", b""), b"weft-sig-v1\0\0");
    }

    #[test]
    fn peer_id_prefix_is_identity_multihash_of_ed25519_protobuf() {
        // multihash code 0x00 (identity), digest length 36; protobuf field 1 (varint) =
        // 1 (Ed25519), field 2 (bytes) of length 32.
        assert_eq!(PEER_ID_PREFIX, [0x00, 36, (1 << 3), 1, (2 << 3) | 2, 32]);
    }

    #[test]
    fn x25519_secret_matches_x25519_public() {
        for i in 0..16u8 {
            let sk = SecretKey::from_seed(&[i; 32]);
            let from_secret = x25519_dalek::PublicKey::from(&sk.x25519_secret());
            assert_eq!(sk.public().x25519_public().unwrap(), from_secret);
        }
        let generated = SecretKey::generate();
        assert_eq!(
            generated.public().x25519_public().unwrap(),
            x25519_dalek::PublicKey::from(&generated.x25519_secret())
        );
    }

    #[test]
    fn signature_deserializes_from_non_borrowed_input() {
        let sig: [u8; 64] = std::array::from_fn(|i| i as u8);
        // Transient bytes (what readers and many formats hand out).
        let d = BytesDeserializer::<ValueError>::new(&sig);
        assert_eq!(sig_bytes::deserialize(d).unwrap(), sig);
        // A sequence of integers (what JSON and other self-describing formats give).
        let d = SeqDeserializer::<_, ValueError>::new(sig.iter().copied());
        assert_eq!(sig_bytes::deserialize(d).unwrap(), sig);
        // Wrong lengths.
        let d = BytesDeserializer::<ValueError>::new(&sig[..63]);
        assert!(sig_bytes::deserialize(d).is_err());
        let d = SeqDeserializer::<_, ValueError>::new(sig[..63].iter().copied());
        assert!(sig_bytes::deserialize(d).is_err());
        let long = [sig.as_slice(), &[0]].concat();
        let d = SeqDeserializer::<_, ValueError>::new(long.iter().copied());
        assert!(sig_bytes::deserialize(d).is_err());
        let d = BytesDeserializer::<ValueError>::new(&long);
        assert!(sig_bytes::deserialize(d).is_err());
    }

    #[test]
    fn certificate_body_encoding_is_what_is_signed() {
        let person = SecretKey::from_seed(&[1; 32]);
        let device = DeviceId(SecretKey::from_seed(&[2; 32]).public());
        let cert = DeviceCertificate::issue(&person, device, "d", 9);
        let body = postcard::to_stdvec(&cert.body).unwrap();
        assert!(
            person
                .public()
                .verify(CERT_CONTEXT, &body, &cert.signature)
                .is_ok()
        );
        assert_eq!(CERT_CONTEXT, "device-certificate");
    }
}
