//! Folders: their ids, the folder secret, and the two keys derived from it.
//!
//! A folder secret is 32 random bytes with an **epoch**; rotating it (when a member is
//! removed) increments the epoch. From it, with BLAKE3 `derive_key` bound to the folder
//! id and the epoch, come the **convergence secret** (keys chunks, see [`crate::chunk`])
//! and the **metadata key** (seals log-entry bodies: paths and manifests).
use crate::CryptoError;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A folder's random 16-byte id, written as 32 hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FolderId(pub [u8; 16]);

impl FolderId {
    /// A fresh random id.
    pub fn generate() -> FolderId {
        FolderId(crate::random_bytes::<16>())
    }
}

impl fmt::Display for FolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for FolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FolderId({})", &hex::encode(self.0)[..8])
    }
}

impl std::str::FromStr for FolderId {
    type Err = CryptoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let v = hex::decode(s).map_err(|e| CryptoError::Parse {
            what: "folder id",
            reason: e.to_string(),
        })?;
        let a: [u8; 16] = v.try_into().map_err(|v: Vec<u8>| CryptoError::Length {
            what: "folder id",
            expected: 16,
            got: v.len(),
        })?;
        Ok(FolderId(a))
    }
}

/// The root secret of one epoch of a folder. Held only by members' devices.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct FolderSecret {
    /// Incremented each time the secret is rotated.
    pub epoch: u32,
    /// 32 random bytes.
    pub bytes: [u8; 32],
}

impl fmt::Debug for FolderSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FolderSecret(epoch {})", self.epoch)
    }
}

impl FolderSecret {
    /// A fresh secret for epoch 0.
    pub fn generate() -> FolderSecret {
        FolderSecret {
            epoch: 0,
            bytes: crate::random_bytes::<32>(),
        }
    }

    /// The next epoch's fresh secret (for rotation); `None` once the epochs are used
    /// up (after 2^32 − 1 rotations: the folder needs a new id then).
    pub fn rotate(&self) -> Option<FolderSecret> {
        Some(FolderSecret {
            epoch: self.epoch.checked_add(1)?,
            bytes: crate::random_bytes::<32>(),
        })
    }

    /// Derives this epoch's keys for `folder`.
    pub fn keys(&self, folder: &FolderId) -> FolderKeys {
        let mut input = Vec::with_capacity(52);
        input.extend_from_slice(&self.bytes);
        input.extend_from_slice(&folder.0);
        input.extend_from_slice(&self.epoch.to_le_bytes());
        let k = FolderKeys {
            folder: *folder,
            epoch: self.epoch,
            convergence: blake3::derive_key("weft folder convergence secret v1", &input),
            metadata: blake3::derive_key("weft folder metadata key v1", &input),
        };
        input.zeroize();
        k
    }
}

/// The keys of one folder epoch.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct FolderKeys {
    #[zeroize(skip)]
    folder: FolderId,
    epoch: u32,
    convergence: [u8; 32],
    metadata: [u8; 32],
}

impl fmt::Debug for FolderKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FolderKeys({:?}, epoch {})", self.folder, self.epoch)
    }
}

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

impl FolderKeys {
    /// The folder these keys belong to.
    pub fn folder(&self) -> FolderId {
        self.folder
    }

    /// The epoch of the secret they were derived from.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The convergence secret, which keys chunk encryption.
    pub fn convergence_secret(&self) -> &[u8; 32] {
        &self.convergence
    }

    /// Seals a log-entry body under the metadata key with a random nonce;
    /// `aad` (the entry header) is authenticated but not encrypted, so a body cannot
    /// be moved under another header. Output: nonce ‖ ciphertext ‖ tag.
    pub fn seal_metadata(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new(&Key::from(self.metadata));
        let nonce_bytes = crate::random_bytes::<NONCE_LEN>();
        let nonce = XNonce::from(nonce_bytes);
        let ct = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&ct);
        out
    }

    /// Opens what [`FolderKeys::seal_metadata`] produced.
    pub fn open_metadata(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let err = CryptoError::Decrypt { what: "entry body" };
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(err);
        }
        let (n, ct) = sealed.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(n).map_err(|_| err.clone())?;
        let cipher = XChaCha20Poly1305::new(&Key::from(self.metadata));
        cipher
            .decrypt(&nonce, Payload { msg: ct, aad })
            .map_err(|_| err)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn derivation_inputs_and_labels() {
        let secret = FolderSecret {
            epoch: 0x0102_0304,
            bytes: [9; 32],
        };
        let folder = FolderId([7; 16]);
        let k = secret.keys(&folder);
        let mut input = [9u8; 32].to_vec();
        input.extend_from_slice(&[7; 16]);
        input.extend_from_slice(&[4, 3, 2, 1]);
        assert_eq!(
            k.convergence,
            blake3::derive_key("weft folder convergence secret v1", &input)
        );
        assert_eq!(
            k.metadata,
            blake3::derive_key("weft folder metadata key v1", &input)
        );
        assert_ne!(k.convergence, k.metadata);
        assert_eq!(k.folder(), folder);
        assert_eq!(k.epoch(), 0x0102_0304);
    }

    #[test]
    fn sealed_metadata_layout() {
        let k = FolderSecret::generate().keys(&FolderId::generate());
        let sealed = k.seal_metadata(b"a", b"hello");
        assert_eq!(sealed.len(), NONCE_LEN + 5 + TAG_LEN);
        let cipher = XChaCha20Poly1305::new(&Key::from(k.metadata));
        let nonce = XNonce::try_from(&sealed[..NONCE_LEN]).unwrap();
        let pt = cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: &sealed[NONCE_LEN..],
                    aad: b"a",
                },
            )
            .unwrap();
        assert_eq!(pt, b"hello");
        // The shortest sealed body (empty plaintext) opens; one byte less does not.
        let empty = k.seal_metadata(b"", b"");
        assert_eq!(empty.len(), NONCE_LEN + TAG_LEN);
        assert_eq!(k.open_metadata(b"", &empty).unwrap(), b"");
        assert!(k.open_metadata(b"", &empty[1..]).is_err());
    }
}
