use thiserror::Error;

/// Every way a cryptographic check can fail.
///
/// Deliberately coarse where detail would help an attacker: a ciphertext that fails
/// to open says only that it failed, whatever was tampered.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// A signature did not verify under the claimed key.
    #[error("signature does not verify")]
    BadSignature,
    /// An AEAD ciphertext did not open: wrong key, or tampered bytes.
    #[error("ciphertext does not decrypt ({what}): wrong key or tampered data")]
    Decrypt {
        /// What was being opened (chunk, entry body, wrapped key).
        what: &'static str,
    },
    /// A byte string is not a valid public key.
    #[error("invalid public key")]
    BadPublicKey,
    /// A value has the wrong length.
    #[error("{what}: expected {expected} bytes, got {got}")]
    Length {
        /// What was being decoded.
        what: &'static str,
        /// The length required.
        expected: usize,
        /// The length found.
        got: usize,
    },
    /// A textual id or key could not be parsed.
    #[error("cannot parse {what}: {reason}")]
    Parse {
        /// What was being parsed.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// A certificate is well-formed but not for this purpose or owner.
    #[error("certificate rejected: {0}")]
    Certificate(&'static str),
    /// A chunk's ciphertext does not hash to the id it was fetched under.
    #[error("chunk bytes do not match chunk id {expected}")]
    ChunkIdMismatch {
        /// The id it should have had.
        expected: String,
    },
}
