//! weft's cryptography: every key, signature and ciphertext type the other crates use.
//!
//! Nothing here does I/O. The other crates never import `ed25519-dalek`,
//! `x25519-dalek`, `chacha20poly1305` or `ring` directly: they go through these types,
//! so that every key is tied to its purpose (domain-separated derivations,
//! associated data naming what a ciphertext is) and a misuse does not compile.
//!
//! Layout:
//! - [`identity`]: person and device keys, their ids, device certificates.
//! - [`folder`]: folder ids, the folder secret and the keys derived from it,
//!   sealing of log-entry bodies under the metadata key.
//! - [`chunk`]: convergent chunk keys, chunk sealing, chunk ids.
//! - [`wrap`]: sealing a secret to a person's X25519 key (for sharing and pairing).
//! - [`link`]: share links: the key in the URL's fragment, the password KDF, the
//!   sealed record a relay serves without being able to read it.
//! - [`recovery`]: the person key as a recovery key a person can write down.
//! - [`hash`]: the 32-byte BLAKE3 digest type used everywhere.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(missing_docs)]

pub mod chunk;
mod error;
pub mod folder;
pub mod hash;
pub mod identity;
pub mod link;
pub mod recovery;
pub mod wrap;

pub use chunk::{ChunkId, ChunkKey, SealedChunk};
pub use error::CryptoError;
pub use folder::{FolderId, FolderKeys, FolderSecret};
pub use hash::Hash;
pub use identity::{DeviceCertificate, DeviceId, PersonId, PublicKey, SecretKey, Signature};

/// Fills `buf` with bytes from the operating system's CSPRNG (through `rand`'s thread RNG,
/// which is seeded from it).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    rand::fill(&mut buf[..]);
    buf
}
