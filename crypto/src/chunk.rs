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
//!
//! Every byte a device indexes, serves or receives goes through this cipher (a scan
//! seals, a served chunk is sealed again from the file, a received one is opened), so
//! the faster of two implementations of the same RFC 8439 construction is chosen at
//! run time (`Backend`): the `chacha20poly1305` crate where the CPU has AVX-512 (its
//! AVX-512 ChaCha20, enabled in `.cargo/config.toml`, about doubled sealing there), and
//! `ring`'s assembly elsewhere (~1.45× the crate's AVX2 speed, measured on a 2-core
//! EPYC without AVX-512). The tests check that both give the same bytes.
use crate::{CryptoError, Hash};
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::OnceLock;

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
        let mut out = Vec::new();
        self.seal_into(plaintext, &mut out);
        out
    }

    /// Encrypts `plaintext` into `out`, replacing its contents and reusing its
    /// allocation (a scan recycles these buffers: fresh ones cost page faults).
    pub fn seal_into(&self, plaintext: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.reserve(plaintext.len() + CHUNK_OVERHEAD);
        out.extend_from_slice(plaintext);
        self.seal_in_place(out);
    }

    /// Encrypts the plaintext in `buf` in place, appending the tag. Fails only for
    /// messages beyond 256 GiB, which leave `buf` empty (no chunk is that large).
    pub fn seal_in_place(&self, buf: &mut Vec<u8>) {
        self.seal_in_place_with(Backend::get(), buf)
    }

    fn seal_in_place_with(&self, backend: Backend, buf: &mut Vec<u8>) {
        let tag: Option<[u8; CHUNK_OVERHEAD]> = match backend {
            Backend::Ring => self
                .cipher()
                .seal_in_place_separate_tag(zero_nonce(), Aad::empty(), buf)
                .ok()
                .and_then(|t| t.as_ref().try_into().ok()),
            Backend::RustCrypto => chacha20poly1305::ChaCha20Poly1305::new(&self.0.into())
                .encrypt_inout_detached(&Default::default(), &[], buf.as_mut_slice().into())
                .ok()
                .map(Into::into),
        };
        match tag {
            Some(tag) => buf.extend_from_slice(&tag),
            None => buf.clear(),
        }
    }

    /// Decrypts `ciphertext` (plaintext then tag) in place and returns the plaintext's
    /// length; fails if it was tampered or the key is wrong.
    fn open_in_place(&self, ciphertext: &mut [u8]) -> Result<usize, CryptoError> {
        self.open_in_place_with(Backend::get(), ciphertext)
    }

    fn open_in_place_with(
        &self,
        backend: Backend,
        ciphertext: &mut [u8],
    ) -> Result<usize, CryptoError> {
        let bad = CryptoError::Decrypt { what: "chunk" };
        let n = ciphertext
            .len()
            .checked_sub(CHUNK_OVERHEAD)
            .ok_or(bad.clone())?;
        let (msg, tag) = ciphertext.split_at_mut(n);
        let ok = match backend {
            Backend::Ring => {
                let tag = Tag::try_from(&*tag).map_err(|_| bad.clone())?;
                self.cipher()
                    .open_in_place_separate_tag(zero_nonce(), Aad::empty(), tag, msg, 0..)
                    .is_ok()
            }
            Backend::RustCrypto => {
                let tag = chacha20poly1305::Tag::try_from(&*tag).map_err(|_| bad.clone())?;
                chacha20poly1305::ChaCha20Poly1305::new(&self.0.into())
                    .decrypt_inout_detached(&Default::default(), &[], msg.into(), &tag)
                    .is_ok()
            }
        };
        if ok { Ok(n) } else { Err(bad) }
    }

    /// Decrypts a chunk's ciphertext; fails if it was tampered or the key is wrong.
    pub fn open(&self, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut buf = ciphertext.to_vec();
        let n = self.open_in_place(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    fn cipher(&self) -> LessSafeKey {
        // A 32-byte key is always valid for ChaCha20-Poly1305.
        match UnboundKey::new(&CHACHA20_POLY1305, &self.0) {
            Ok(k) => LessSafeKey::new(k),
            Err(_) => unreachable!("ChaCha20-Poly1305 takes any 32-byte key"),
        }
    }
}

/// The all-zero nonce: each chunk key seals exactly one plaintext.
fn zero_nonce() -> Nonce {
    Nonce::assume_unique_for_key([0; 12])
}

/// Which implementation seals and opens chunks (the same bytes either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    /// `ring`'s assembly: the faster one without AVX-512.
    Ring,
    /// The `chacha20poly1305` crate, whose AVX-512 ChaCha20 is the faster one where
    /// the CPU has it.
    RustCrypto,
}

impl Backend {
    fn get() -> Backend {
        static CHOSEN: OnceLock<Backend> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            #[cfg(all(target_arch = "x86_64", chacha20_avx512))]
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Backend::RustCrypto;
            }
            Backend::Ring
        })
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

    /// As [`SealedChunk::seal`], sealing `plaintext`'s own buffer in place: the
    /// ciphertext takes its allocation, so nothing is copied (a scan hands each chunk's
    /// buffer on like this and recycles it). Reserve [`CHUNK_OVERHEAD`] spare bytes of
    /// capacity to spare the tag a reallocation.
    pub fn seal_owned(convergence_secret: &[u8; 32], mut plaintext: Vec<u8>) -> SealedChunk {
        let key = ChunkKey::derive(convergence_secret, &plaintext);
        let len = plaintext.len() as u32;
        key.seal_in_place(&mut plaintext);
        SealedChunk {
            id: ChunkId::of(&plaintext),
            key,
            len,
            ciphertext: plaintext,
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
        id.check(&ciphertext)?;
        let n = key.open_in_place(&mut ciphertext)?;
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

    /// The reference implementation (every chunk sealed before ring was used here).
    fn reference_seal(key: &ChunkKey, plaintext: &[u8]) -> Vec<u8> {
        use chacha20poly1305::aead::{Aead, KeyInit};
        chacha20poly1305::ChaCha20Poly1305::new(&key.0.into())
            .encrypt(&chacha20poly1305::Nonce::default(), plaintext)
            .unwrap()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Both backends give the RFC 8439 bytes the chunk format names (identical to
        /// the `chacha20poly1305` crate's), open them, and refuse a flipped bit.
        #[test]
        fn both_backends_match_the_reference(key in proptest::prelude::any::<[u8; 32]>(),
                                      pt in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..70_000)) {
            let key = ChunkKey(key);
            let reference = reference_seal(&key, &pt);
            proptest::prop_assert_eq!(&key.seal(&pt), &reference);
            for backend in [Backend::Ring, Backend::RustCrypto] {
                let mut buf = pt.clone();
                key.seal_in_place_with(backend, &mut buf);
                proptest::prop_assert_eq!(&buf, &reference);
                let n = key.open_in_place_with(backend, &mut buf).unwrap();
                proptest::prop_assert_eq!(&buf[..n], &pt[..]);
                let mut bad = reference.clone();
                let i = bad.len() / 2;
                bad[i] ^= 1;
                proptest::prop_assert!(key.open_in_place_with(backend, &mut bad).is_err());
            }
        }
    }

    #[test]
    fn overhead_and_zero_nonce() {
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
            // Sealing the plaintext's own buffer gives the same chunk.
            let mut own = Vec::with_capacity(n + CHUNK_OVERHEAD);
            own.resize(n, 0xaa);
            assert!(SealedChunk::seal_owned(&[3; 32], own) == sealed);
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
