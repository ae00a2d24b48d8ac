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
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(b: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let v: &[u8] = serde_bytes_compat(d)?;
        v.try_into()
            .map_err(|_| serde::de::Error::invalid_length(v.len(), &"64 bytes"))
    }
    fn serde_bytes_compat<'de, D: Deserializer<'de>>(d: D) -> Result<&'de [u8], D::Error> {
        <&[u8]>::deserialize(d)
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", hex::encode(&self.0[..6]))
    }
}

/// An ed25519 secret key (the 32-byte seed). Zeroed on drop.
pub struct SecretKey(SigningKey);

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
    pub fn sign(&self, context: &str, msg: &[u8]) -> Signature {
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
    pub fn verify(&self, context: &str, msg: &[u8], sig: &Signature) -> Result<(), CryptoError> {
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
            return Err(CryptoError::Certificate("certificate is for another person"));
        }
        let bytes = postcard::to_stdvec(&self.body).map_err(|_| CryptoError::Certificate("cannot encode"))?;
        self.body.person.0.verify(CERT_CONTEXT, &bytes, &self.signature)
    }

    /// Encodes for storage or the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes and verifies.
    pub fn from_bytes(b: &[u8]) -> Result<Self, CryptoError> {
        let c: DeviceCertificate = postcard::from_bytes(b).map_err(|e| CryptoError::Parse {
            what: "device certificate",
            reason: e.to_string(),
        })?;
        c.verify(None)?;
        Ok(c)
    }
}
