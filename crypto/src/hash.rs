//! The 32-byte BLAKE3 digest that names chunks, log entries and file contents.
use serde::{Deserialize, Serialize};
use std::fmt;

/// A BLAKE3-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The all-zero hash, used as "no previous entry" in a hash chain.
    pub const ZERO: Hash = Hash([0u8; 32]);

    /// BLAKE3 of `data`.
    pub fn of(data: &[u8]) -> Hash {
        Hash(*blake3::hash(data).as_bytes())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Hash, crate::CryptoError> {
        let v = hex::decode(s).map_err(|e| crate::CryptoError::Parse {
            what: "hash",
            reason: e.to_string(),
        })?;
        let arr: [u8; 32] = v
            .try_into()
            .map_err(|v: Vec<u8>| crate::CryptoError::Length {
                what: "hash",
                expected: 32,
                got: v.len(),
            })?;
        Ok(Hash(arr))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::str::FromStr for Hash {
    type Err = crate::CryptoError;
    /// The inverse of `Display`: 64 hex characters (either case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Hash::from_hex(s)
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", &self.to_hex()[..12])
    }
}
