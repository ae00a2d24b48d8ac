//! Convergent chunk encryption.
//!
//! - chunk key = BLAKE3 keyed by the folder's convergence secret, over the plaintext;
//! - ciphertext = ChaCha20-Poly1305 under the chunk key with an all-zero nonce (each
//!   key encrypts exactly one plaintext, so nonce reuse cannot occur);
//! - chunk id = BLAKE3 of the ciphertext.
//!
//! So equal plaintext in one folder is stored once, anyone holding a blob can check it
//! against its id without a key, an outsider cannot confirm a guessed file, and one
//! file can be shared by handing out its own chunk keys only.
use crate::{CryptoError, Hash};
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The id of a stored chunk: BLAKE3 of its ciphertext.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChunkId(pub Hash);

impl ChunkId {
    /// The id of `ciphertext`.
    pub fn of(ciphertext: &[u8]) -> ChunkId {
        ChunkId(Hash::of(ciphertext))
    }

    /// Checks that `ciphertext` is the chunk named by this id.
    pub fn check(&self, ciphertext: &[u8]) -> Result<(), CryptoError> {
        if ChunkId::of(ciphertext) == *self {
            Ok(())
        } else {
            Err(CryptoError::ChunkIdMismatch {
                expected: self.0.to_hex(),
            })
        }
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::str::FromStr for ChunkId {
    type Err = CryptoError;
    /// The inverse of `Display`: 64 hex characters.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Hash::from_hex(s).map(ChunkId)
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.0.to_hex()[..12])
    }
}

/// The key that seals one chunk. Lives only inside encrypted manifests.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkKey(pub [u8; 32]);

impl fmt::Debug for ChunkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChunkKey(…)")
    }
}

/// Poly1305 tag length: a sealed chunk is this much longer than its plaintext.
pub const CHUNK_OVERHEAD: usize = 16;

impl ChunkKey {
    /// The convergent key of `plaintext` under a folder's convergence secret.
    pub fn derive(convergence_secret: &[u8; 32], plaintext: &[u8]) -> ChunkKey {
        ChunkKey(*blake3::keyed_hash(convergence_secret, plaintext).as_bytes())
    }

    /// Encrypts `plaintext` (which must be what the key was derived from).
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let cipher = ChaCha20Poly1305::new(&Key::from(self.0));
        cipher
            .encrypt(&Nonce::default(), plaintext)
            .unwrap_or_default()
    }

    /// Encrypts `plaintext` into `out`, replacing its contents and reusing its
    /// allocation (a scan recycles these buffers: fresh ones cost page faults).
    pub fn seal_into(&self, plaintext: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.reserve(plaintext.len() + CHUNK_OVERHEAD);
        out.extend_from_slice(plaintext);
        // Fails only for messages beyond 256 GiB: as `seal`, an empty result.
        self.seal_in_place(out);
    }

    /// Encrypts the plaintext in `buf` in place, appending the tag.
    pub fn seal_in_place(&self, buf: &mut Vec<u8>) {
        use chacha20poly1305::aead::AeadInOut;
        let cipher = ChaCha20Poly1305::new(&Key::from(self.0));
        match cipher.encrypt_inout_detached(&Nonce::default(), &[], buf.as_mut_slice().into()) {
            Ok(tag) => buf.extend_from_slice(&tag),
            Err(_) => buf.clear(),
        }
    }

    /// Decrypts a chunk's ciphertext; fails if it was tampered or the key is wrong.
    pub fn open(&self, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let cipher = ChaCha20Poly1305::new(&Key::from(self.0));
        cipher
            .decrypt(&Nonce::default(), ciphertext)
            .map_err(|_| CryptoError::Decrypt { what: "chunk" })
    }
}

/// One sealed chunk: what a scan produces for every piece of a file.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedChunk {
    /// BLAKE3 of `ciphertext`.
    pub id: ChunkId,
    /// The convergent key.
    pub key: ChunkKey,
    /// The plaintext length.
    pub len: u32,
    /// The sealed bytes.
    pub ciphertext: Vec<u8>,
}

impl SealedChunk {
    /// Keys, seals and names one plaintext chunk: the three crypto passes a byte goes
    /// through during a scan.
    pub fn seal(convergence_secret: &[u8; 32], plaintext: &[u8]) -> SealedChunk {
        let key = ChunkKey::derive(convergence_secret, plaintext);
        let ciphertext = key.seal(plaintext);
        SealedChunk {
            id: ChunkId::of(&ciphertext),
            key,
            len: plaintext.len() as u32,
            ciphertext,
        }
    }

    /// As [`SealedChunk::seal`], sealing into `buf` (whose allocation is reused).
    pub fn seal_with(
        convergence_secret: &[u8; 32],
        plaintext: &[u8],
        mut buf: Vec<u8>,
    ) -> SealedChunk {
        let key = ChunkKey::derive(convergence_secret, plaintext);
        key.seal_into(plaintext, &mut buf);
        SealedChunk {
            id: ChunkId::of(&buf),
            key,
            len: plaintext.len() as u32,
            ciphertext: buf,
        }
    }

    /// As [`SealedChunk::open`], decrypting in place in `ciphertext`'s own buffer (no
    /// second buffer for the plaintext).
    pub fn open_owned(
        id: &ChunkId,
        key: &ChunkKey,
        len: u32,
        mut ciphertext: Vec<u8>,
    ) -> Result<Vec<u8>, CryptoError> {
        use chacha20poly1305::aead::AeadInOut;
        id.check(&ciphertext)?;
        let bad = CryptoError::Decrypt { what: "chunk" };
        let n = ciphertext.len().checked_sub(CHUNK_OVERHEAD).ok_or(bad)?;
        let (msg, tag) = ciphertext.split_at_mut(n);
        let tag = chacha20poly1305::Tag::try_from(&*tag)
            .map_err(|_| CryptoError::Decrypt { what: "chunk" })?;
        ChaCha20Poly1305::new(&Key::from(key.0))
            .decrypt_inout_detached(&Nonce::default(), &[], msg.into(), &tag)
            .map_err(|_| CryptoError::Decrypt { what: "chunk" })?;
        ciphertext.truncate(n);
        if n != len as usize {
            return Err(CryptoError::Length {
                what: "chunk plaintext",
                expected: len as usize,
                got: n,
            });
        }
        Ok(ciphertext)
    }

    /// Checks `ciphertext` against `id`, decrypts it with `key`, and checks the length.
    pub fn open(
        id: &ChunkId,
        key: &ChunkKey,
        len: u32,
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        id.check(ciphertext)?;
        let pt = key.open(ciphertext)?;
        if pt.len() != len as usize {
            return Err(CryptoError::Length {
                what: "chunk plaintext",
                expected: len as usize,
                got: pt.len(),
            });
        }
        Ok(pt)
    }
}

impl fmt::Debug for SealedChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedChunk({:?}, {} bytes)", self.id, self.len)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn overhead_and_zero_nonce() {
        assert_eq!(Nonce::default().as_slice(), &[0u8; 12]);
        let key = ChunkKey([3; 32]);
        for n in [0usize, 1, 64, 1000] {
            assert_eq!(key.seal(&vec![0xaa; n]).len(), n + CHUNK_OVERHEAD);
            // Opening in place gives the plaintext back; a flipped bit is refused.
            let sealed = SealedChunk::seal(&[3; 32], &vec![0xaa; n]);
            let pt = SealedChunk::open_owned(
                &sealed.id,
                &sealed.key,
                sealed.len,
                sealed.ciphertext.clone(),
            );
            assert_eq!(pt.unwrap(), vec![0xaa; n]);
            let mut bad = sealed.ciphertext.clone();
            bad[0] ^= 1;
            assert!(
                SealedChunk::open_owned(&ChunkId::of(&bad), &sealed.key, sealed.len, bad).is_err()
            );
            // Sealing into a used buffer gives the same bytes.
            let mut buf = vec![7u8; 3 * n + 5];
            key.seal_into(&vec![0xaa; n], &mut buf);
            assert_eq!(buf, key.seal(&vec![0xaa; n]));
        }
    }

    #[test]
    fn chunk_id_mismatch_names_the_expected_id() {
        let id = ChunkId::of(b"x");
        assert_eq!(
            id.check(b"y"),
            Err(CryptoError::ChunkIdMismatch {
                expected: id.to_string()
            })
        );
    }
}
